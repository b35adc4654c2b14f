"""Sphinx configuration for the daskh5 documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Run the examples in the pages and docstrings::

    python -m sphinx -b doctest docs docs/_build/doctest

Links to the NumPy, dask, xarray, h5py and PyTables docs need their
intersphinx inventories from the network.  They are off by default so that an
offline build stays warning-free; turn them on with
``DASKH5_DOCS_INTERSPHINX=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Make ``import daskh5`` find the checkout even when it is not installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import daskh5  # noqa: E402

# -- Project -------------------------------------------------------------------------
project = "daskh5"
author = "the daskh5 developers"
copyright = "the daskh5 developers"
version = daskh5.__version__
release = daskh5.__version__

# -- General -------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
# performance-results.txt is pulled into performance.rst with ``.. include::``
# and is not a page of its own.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "performance-results.txt"]
default_role = "py:obj"

# -- autodoc / autosummary / numpydoc ---------------------------------------------
autodoc_typehints = "none"  # numpydoc's Parameters sections already say the types
autodoc_member_order = "bysource"
autosummary_generate = False  # api.rst lists the objects by hand; no stub files
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- doctest -------------------------------------------------------------------------
doctest_global_setup = """
import numpy as np
import daskh5
"""
doctest_global_cleanup = """
daskh5.close_files()
"""

# -- intersphinx (opt-in, needs the network) ----------------------------------------
if os.environ.get("DASKH5_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "dask": ("https://docs.dask.org/en/stable", None),
        "distributed": ("https://distributed.dask.org/en/stable", None),
        "xarray": ("https://docs.xarray.dev/en/stable", None),
        "h5py": ("https://docs.h5py.org/en/stable", None),
        "tables": ("https://www.pytables.org", None),
    }
    intersphinx_timeout = 5

# -- HTML ----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"daskh5 {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": []}
html_show_sourcelink = False
