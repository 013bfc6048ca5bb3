"""Execute course notebooks top to bottom and save them with their outputs.

    python tools/build_notebook.py course/01_float_formats.ipynb   # re-run one
    python tools/build_notebook.py /tmp/01_float_formats.py        # from a jupytext draft
    python tools/build_notebook.py --all                           # every chapter

A ``.py`` argument is a jupytext "percent" draft; it is converted and written to
``course/<same name>.ipynb``. Execution uses a fresh kernel of this Python, in
``course/``, with the same environment as the nbval run (progress bars off), so
the saved outputs are the ones ``pytest`` reproduces. The notebook's metadata
records the environment that made them (``mpcourse.repro``): ``pytest``
compares them exactly there, and in nbval's lax mode elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from mpcourse.grading import mark_cells
from mpcourse.repro import record_key

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def load(path: Path) -> nbformat.NotebookNode:
    if path.suffix == ".py":
        import jupytext

        return jupytext.read(path, fmt="py:percent")
    return nbformat.read(path, as_version=4)


def build(path: Path, timeout: int = 600) -> Path:
    nb = load(path)
    target = COURSE / (path.stem + ".ipynb")
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata.pop("jupytext", None)
    nb.nbformat, nb.nbformat_minor = 4, 5
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:03d}"  # stable ids keep diffs small
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    os.environ["MPCOURSE_NO_PROGRESS"] = "1"
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(COURSE)}},
        record_timing=False,
    )
    client.allow_errors = True  # cells tagged raises-exception; checked below
    client.execute()
    bad = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors and "raises-exception" not in cell.metadata.get("tags", []):
            bad.append((i, errors[0].ename, errors[0].evalue))
    record_key(nb)  # which torch/CPU made these outputs: strict nbval only there
    mark_cells(nb, target)  # nbgrader's cell metadata, from the solution markers
    nbformat.validate(nb)
    nbformat.write(nb, target)
    took = time.perf_counter() - start
    print(f"{target.relative_to(ROOT)}: {len(nb.cells)} cells in {took:.1f} s")
    if bad:
        for i, name, value in bad:
            print(f"  cell {i}: {name}: {value}", file=sys.stderr)
        raise SystemExit(f"{target.name}: {len(bad)} cell(s) raised errors; fix them and rebuild")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument(
        "--all", action="store_true", help="rebuild every course/NN_*.ipynb in order"
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    paths = sorted(COURSE.glob("[0-9][0-9]_*.ipynb")) if args.all else args.paths
    if not paths:
        parser.error("give notebook paths or --all")
    for path in paths:
        build(path.resolve(), args.timeout)


if __name__ == "__main__":
    main()
