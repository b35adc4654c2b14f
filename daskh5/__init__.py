"""daskh5: compute on larger-than-RAM PyTables/HDF5 data with dask and xarray.

>>> import daskh5
>>> sorted(daskh5.__all__)[:2]
['ChunkDecodeError', 'Daskh5Error']
"""

from __future__ import annotations

from daskh5._bag import SampleBag
from daskh5._files import close_files
from daskh5._ragged_write import write_ragged
from daskh5.array import from_pytables
from daskh5.batches import iter_batches
from daskh5.errors import (
    ChunkDecodeError,
    Daskh5Error,
    ExternalDataError,
    FileBusyError,
    FileNotFound,
    IncompatibleArrayError,
    NodeExistsError,
    NodeKindError,
    NodeNameError,
    NodeNotFound,
    NotHDF5Error,
    RaggedLayoutError,
    ResourceLimitError,
    UnsafePickleError,
    UnsupportedDtypeError,
    UnsupportedFilterError,
    WhereError,
    WriteError,
)
from daskh5.ragged import RaggedArray, open_ragged, read_ragged
from daskh5.stats import LabelStats, label_stats
from daskh5.table import read_table
from daskh5.writer import append, to_pytables

__version__ = "0.1.0"

__all__ = [
    "ChunkDecodeError",
    "Daskh5Error",
    "ExternalDataError",
    "FileBusyError",
    "FileNotFound",
    "IncompatibleArrayError",
    "LabelStats",
    "NodeExistsError",
    "NodeKindError",
    "NodeNameError",
    "NodeNotFound",
    "NotHDF5Error",
    "RaggedArray",
    "RaggedLayoutError",
    "ResourceLimitError",
    "SampleBag",
    "UnsafePickleError",
    "UnsupportedDtypeError",
    "UnsupportedFilterError",
    "WhereError",
    "WriteError",
    "__version__",
    "append",
    "close_files",
    "from_pytables",
    "iter_batches",
    "label_stats",
    "open_ragged",
    "read_ragged",
    "read_table",
    "to_pytables",
    "write_ragged",
]
