"""The README's snippets run, in order, as one plain script (no ``__main__`` guard), and its shell lines too."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import daskh5

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture
def users_files(tmp_path):
    """The files the README talks about: four clusters with their labels, and ragged utterances."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200_000).astype(np.int8)
    centres = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float)
    daskh5.to_pytables(centres[labels] + rng.normal(scale=0.2, size=(200_000, 2)), tmp_path / "clusters.h5",
                       "/data", mode="w", progress=False)  # fmt: skip
    daskh5.to_pytables(labels, tmp_path / "clusters.h5", "/clusters", progress=False)
    utterances = [rng.normal(size=(int(n), 13)).astype("f4") for n in rng.integers(5, 50, 300)]
    daskh5.write_ragged(utterances, tmp_path / "speech.h5", "/utterances", mode="w", progress=False)
    return tmp_path


@pytest.mark.cluster
def test_readme_python_snippets_run_as_a_plain_script(users_files, cluster_client):
    blocks = _blocks("python")
    assert len(blocks) >= 6
    script = "\n".join(blocks).replace("tcp://scheduler:8786", cluster_client.scheduler.address)
    (users_files / "readme.py").write_text(script)
    out = subprocess.run(
        [sys.executable, "readme.py"], cwd=users_files, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with daskh5.open_ragged(users_files / "out.h5", "/utterances") as r:
        assert len(r) == 300
    assert daskh5.from_pytables(users_files / "out.h5", "/grown").shape == (2000, 2)  # appended once


def test_readme_shell_lines_run(users_files):
    lines = [
        line.split("#")[0].strip()
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.startswith("daskh5 ") and "demo" not in line
    ]
    assert any(line.startswith("daskh5 info") for line in lines)
    for line in lines:
        argv = [sys.executable, "-m", "daskh5", *line.split()[1:]]
        out = subprocess.run(argv, cwd=users_files, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (line, out.stderr[-2000:])
        if "--plot" in line:
            assert (users_files / line.split("--plot")[1].split()[0]).exists()
