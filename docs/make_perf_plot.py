"""Draw the speed-ratio chart of the performance page from the stored benchmark outputs.

Reads ``docs/performance-results.txt`` (the outputs of ``benchmarks/bench_*.py``
pasted there) and writes ``docs/_static/performance.png``: for every operation,
the time of the other library divided by the time of daskh5, on a log scale
(above 1: daskh5 is faster).  Run it after updating the results::

    python docs/make_perf_plot.py            # from the repository root
    python docs/make_perf_plot.py --results other.txt --out /tmp/perf.png

It needs matplotlib (``pip install -e ".[demo]"``) and fails loudly if a number
it expects is missing, so a change in the benchmarks' output format cannot
silently drop a bar.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

# One colour per library daskh5 is compared with.
COLOURS = {
    "PyTables": "#1f77b4",
    "h5py + hdf5plugin": "#ff7f0e",
    "dask over h5py": "#2ca02c",
    'xarray engine="h5netcdf"': "#9467bd",
}


def _sections(text: str) -> dict[str, str]:
    """The results file split at its ``~~~``-underlined titles: ``{title: body}``."""
    parts = re.split(r"^(.+)\n~{3,}\n", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def _section(sections: dict[str, str], start: str) -> str:
    for title, body in sections.items():
        if title.startswith(start):
            return body
    raise SystemExit(f"no section starting with {start!r} in the results file")


def _number(pattern: str, text: str, what: str) -> float:
    match = re.search(pattern, text, flags=re.M)
    if match is None:
        raise SystemExit(f"could not find {what} (pattern {pattern!r}) in the results file")
    return float(match.group(1))


def parse(text: str) -> list[tuple[str, list[tuple[str, str, str, float]]]]:
    """``[(panel title, [(operation, compared with, colour key, ratio), ...]), ...]`` from the results file.

    A ratio is the other method's time over daskh5's: above 1, daskh5 is faster.
    """
    sections = _sections(text)
    panels = []

    # Reading: the "speed ratios" table of bench_read.py.
    read = _section(sections, "Reading")
    table = read.split("== speed ratios", 1)
    if len(table) != 2:
        raise SystemExit("no '== speed ratios' table in the Reading section")
    ops = {"read": "full read", "sum": ".sum()", "x[::7]": "x[::7]"}
    files = (
        ("blosc:lz4", "blosc:lz4 + shuffle"),
        ("uncompressed", "uncompressed"),
        ("blosc:lz4 EArray", "appended EArray, 64 KiB chunks"),
    )
    for file, title in files:
        rows = []
        for op, label in ops.items():
            pat = rf"^\s*{re.escape(file)}\s+{re.escape(op)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$"
            match = re.search(pat, table[1], flags=re.M)
            if match is None:
                raise SystemExit(f"no speed-ratio row for {file} {op}")
            for name, value in zip(("PyTables", "h5py + hdf5plugin", "dask over h5py"), match.groups()):
                rows.append((label, name, name, float(value)))
        panels.append((f"Reading 800 MB of float64, {title}", rows))

    # Writing: bench_write.py's "t / t(daskh5)" column.
    write = _section(sections, "Writing")
    panels.append(
        (
            "Writing 800 MB (blosc:lz4 + shuffle)",
            [
                (
                    "to_pytables",
                    "PyTables create_carray(obj=)",
                    "PyTables",
                    _number(r"PyTables create_carray.*?([\d.]+)x\s*$", write, "PyTables write"),
                ),
                (
                    "to_pytables",
                    "da.to_hdf5 (h5py + hdf5plugin)",
                    "dask over h5py",
                    _number(r"da\.to_hdf5.*?([\d.]+)x\s*$", write, "to_hdf5 write"),
                ),
            ],
        )
    )

    # xarray engine: bench_xarray.py's "h5netcdf/daskh5" column.
    xr = _section(sections, "xarray engine")
    panels.append(
        (
            'xarray engine, against engine="h5netcdf"',
            [
                (
                    "open_dataset, 1,000 nodes",
                    'xarray engine="h5netcdf"',
                    'xarray engine="h5netcdf"',
                    _number(r"open_dataset.*?([\d.]+)x\s*$", xr, "open"),
                ),
                (
                    "ds.sum(), 800 MB",
                    'xarray engine="h5netcdf"',
                    'xarray engine="h5netcdf"',
                    _number(r"ds\.sum\(\).*?([\d.]+)x\s*$", xr, "sum"),
                ),
            ],
        )
    )

    # Ragged: bench_ragged.py reports "N x slower" (writing) and getter/this, this/limit (reading).
    rag = _section(sections, "Ragged")
    # The faster of daskh5's two ways to read every sample, against both references.
    reads = {
        name: (
            _number(rf"{pattern}\s+[\d.]+ s\s+getter/this\s+([\d.]+)x", rag, f"{name} vs getter"),
            _number(rf"{pattern}.*this/limit\s+([\d.]+)x", rag, f"{name} vs limit"),
        )
        for name, pattern in (
            ("read_ragged", r"daskh5 read_ragged\(\)\.compute\(\)"),
            ("open_ragged", r"daskh5 open_ragged\(\)\[:\]"),
        )
    }
    getter, over_limit = max(reads.values())
    panels.append(
        (
            "Ragged data, 1,000,000 samples",
            [
                (
                    "write_ragged",
                    "PyTables, one append per sample",
                    "PyTables",
                    _number(r"PyTables sample by sample.*?([\d.]+)x slower", rag, "sample-by-sample write"),
                ),
                (
                    "write_ragged",
                    "PyTables, one append per element",
                    "PyTables",
                    _number(
                        r"PyTables element by element.*?([\d.]+)x slower", rag, "element-by-element write"
                    ),
                ),
                ("read every sample", "PyTables, a getter per sample", "PyTables", getter),
                (
                    "read every sample",
                    "PyTables bulk reads + numpy split (the limit)",
                    "PyTables",
                    1.0 / over_limit,
                ),
            ],
        )
    )
    return panels


def _draw_panel(ax, title: str, rows, xlim) -> None:
    """Bars from 1 to each ratio on a log axis: to the right, daskh5 is faster; to the left, slower.

    When every bar's colour says what it is compared with, bars of one operation
    are grouped under one label; otherwise every bar gets its own label.
    """
    grouped = all(against == colour for _op, against, colour, _v in rows)
    ops = list(dict.fromkeys(op for op, *_ in rows)) if grouped else [f"{r[0]}\nvs {r[1]}" for r in rows]
    ys, labels_y = [], []
    for i, row in enumerate(rows):
        if grouped:
            members = [r for r in rows if r[0] == row[0]]
            j, m = members.index(row), len(members)
            ys.append(len(ops) - 1 - ops.index(row[0]) + (m - 1 - 2 * j) * 0.8 / (2 * m))
        else:
            ys.append(len(rows) - 1 - i)
    height = 0.8 / max(sum(r[0] == rows[0][0] for r in rows), 1) if grouped else 0.6
    values = [r[-1] for r in rows]
    ax.barh(ys, [v - 1 for v in values], left=1, height=height * 0.92, color=[COLOURS[r[2]] for r in rows])
    for y, v in zip(ys, values):
        text = f"{v:.2f}x" if v < 10 else f"{v:.0f}x"
        ax.text(v * 1.08 if v >= 1 else v / 1.08, y, text, va="center", ha="left" if v >= 1 else "right",
                fontsize=7.5)  # fmt: skip
    labels_y = list(range(len(ops)))[::-1]
    ax.set_yticks(labels_y, ops, fontsize=8)
    ax.set_xscale("log")
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if xlim[0] <= t <= xlim[1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter("")
    ax.set_xlim(*xlim)
    ax.set_ylim(-0.6, len(ops) - 0.4)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_title(title, fontsize=9.5, loc="left")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", which="major", alpha=0.3)


def draw(panels, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    reading = [p for p in panels if p[0].startswith("Reading")]
    others = [p for p in panels if not p[0].startswith("Reading")]

    def rows_of(panel) -> int:
        rows = panel[1]
        if all(against == colour for _op, against, colour, _v in rows):
            return len({r[0] for r in rows})
        return len(rows)

    fig = plt.figure(figsize=(12, 6.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.1])
    for sub, group in ((left, reading), (right, others)):
        # One log scale per column, from below the slowest ratio to room for the label of the fastest.
        values = [row[-1] for _t, rows in group for row in rows]
        xlim = (min(0.3, min(values) / 2), max(values) * 4)
        axes = sub.subplots(len(group), 1, height_ratios=[rows_of(p) + 0.6 for p in group], sharex=True)
        for ax, (title, rows) in zip(axes, group):
            _draw_panel(ax, title, rows, xlim)
        axes[-1].set_xlabel("time of the other method / time of daskh5 (log scale)", fontsize=8.5)
    used = {row[2] for _t, rows in panels for row in rows}
    fig.legend(
        handles=[Patch(color=c, label=n) for n, c in COLOURS.items() if n in used],
        loc="outside lower center", ncol=len(used), fontsize=8.5, frameon=False,
    )  # fmt: skip
    fig.suptitle(
        "daskh5 against other ways of doing the same thing: bars to the right of 1, daskh5 is faster "
        "(2-core VM, warm page cache)",
        fontsize=10.5,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" entry: the PNG stays byte-identical across matplotlib versions for the same numbers.
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=HERE / "performance-results.txt")
    p.add_argument("--out", type=Path, default=HERE / "_static" / "performance.png")
    args = p.parse_args(argv)
    panels = parse(args.results.read_text(encoding="utf-8"))
    draw(panels, args.out)
    for title, rows in panels:
        print(title)
        for op, against, _colour, value in rows:
            print(f"  {op:<26} vs {against:<46} {value:8.2f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
