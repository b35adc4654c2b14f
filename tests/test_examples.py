"""The examples run, and compute what they claim."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--points",
            "300000",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [
        line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 6
    ]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert sum(int(r[1]) for r in rows) == 300_000
    means = np.array([[float(r[2]), float(r[3])] for r in rows])
    np.testing.assert_allclose(means, [[1, 1], [-1, 1], [-1, -1], [1, -1]], atol=0.01)
    stds = np.array([[float(r[4]), float(r[5])] for r in rows])
    np.testing.assert_allclose(stds, 0.2, atol=0.01)
    assert (tmp_path / "clusters.h5").exists()
