"""A missing optional dependency fails with a message that names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import write_node

import daskh5

PRELUDE = "import sys\nfor m in {hidden!r}: sys.modules[m] = None  # import m raises ImportError\n"


def _run(hidden: list[str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE.format(hidden=hidden) + code],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def labelled(tmp_path):
    path = str(tmp_path / "c.h5")
    write_node(path, "carray", np.ones((100, 2)))
    daskh5.to_pytables(np.arange(100) % 3, path, "/clusters", progress=False)
    daskh5.write_ragged([np.arange(3)], path, "/tokens", progress=False)
    return path


@pytest.mark.parametrize(
    ("hidden", "call", "extra"),
    [
        (["xarray"], "s.to_dataset()", "xarray"),
        (["pandas"], "s.to_frame()", "xarray"),
        (["awkward"], "daskh5.open_ragged(path, '/tokens').to_awkward()", "awkward"),
    ],
)
def test_library_names_the_extra(labelled, hidden, call, extra):
    code = (
        f"import daskh5\npath = {labelled!r}\n"
        "s = daskh5.label_stats(daskh5.from_pytables(path, '/data'), daskh5.from_pytables(path, '/clusters'))\n"
        f"try:\n    {call}\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = _run(hidden, code)
    assert f'pip install "daskh5[{extra}]"' in out.stdout, out.stdout + out.stderr


def test_cli_names_the_extra_before_computing(labelled):
    # --plot is checked first: the missing node would be the error if the statistics ran
    argv = ["stats", labelled, "--data", "/nope", "--labels", "/clusters", "--plot", "s.png"]
    out = _run(["matplotlib"], f"from daskh5.cli import main\nraise SystemExit(main({argv!r}))")
    assert out.returncode == 1 and 'pip install "daskh5[demo]"' in out.stderr, out.stderr
    argv = ["stats", labelled, "--data", "/data", "--labels", "/clusters", "--scheduler", "local"]
    out = _run(["distributed"], f"from daskh5.cli import main\nraise SystemExit(main({argv!r}))")
    assert out.returncode == 1 and 'pip install "daskh5[distributed]"' in out.stderr, out.stderr
    out = _run(["xarray"], "import daskh5.xarray_backend")
    assert 'pip install "daskh5[xarray]"' in out.stderr


@pytest.mark.parametrize("hidden", [["pyarrow"], ["dask.dataframe"]])
def test_frames_name_the_dataframe_extra(tmp_path, hidden):
    path = str(tmp_path / "t.h5")
    import tables

    with tables.open_file(path, "w") as f:
        f.create_table("/", "obs", obj=np.zeros(3, dtype=[("x", "f8")]))
    code = (
        f"import daskh5\nfor call in (lambda: daskh5.read_table({path!r}, '/obs'),):\n"
        "    try:\n        call()\n    except ImportError as e:\n        print('ERR', e)\n"
    )
    out = _run(hidden, code)
    assert "ERR daskh5.read_table needs" in out.stdout and 'pip install "daskh5[dataframe]"' in out.stdout, (
        out.stdout + out.stderr
    )
