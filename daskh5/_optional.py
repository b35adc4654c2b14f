"""Optional dependencies, imported where they are used, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require", "require_dataframe"]

#: module -> the daskh5 extra that installs it
EXTRAS = {
    "xarray": "xarray",
    "pandas": "xarray",
    "flox": "xarray",
    "matplotlib": "demo",
    "distributed": "distributed",
    "awkward": "awkward",
    "bokeh": "demo",
    "s3fs": "remote",
    "fsspec": "remote",
    "pyarrow": "dataframe",
    "dask.dataframe": "dataframe",
}


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` saying what needs it and which extra to install.

    >>> require("numpy", "arrays").__name__
    'numpy'
    >>> require("no_such_module_xyz", "this")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ImportError: this needs no_such_module_xyz: pip install no_such_module_xyz
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module if module in EXTRAS else module.split(".")[0]
        extra = EXTRAS.get(top)
        how = f'pip install "daskh5[{extra}]"' if extra else f"pip install {top}"
        raise ImportError(f"{what} needs {top}: {how}") from exc


def require_dataframe(what: str) -> ModuleType:
    """``dask.dataframe``, checking first for pyarrow (which it needs) so the message names the extra."""
    require("pandas", what)
    require("pyarrow", what)
    return require("dask.dataframe", what)
