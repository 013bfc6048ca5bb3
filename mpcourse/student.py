"""Student copies of the course notebooks: solutions out, everything else intact.

In a course notebook an exercise's answer cell holds its solution between
nbgrader's markers::

    def decode_fp16(bits):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

:func:`strip_solutions` replaces each marked block by
``raise NotImplementedError("...")`` at the block's indentation, keeps any
``### HINT: ...`` lines of the block as comments, clears the outputs of that
cell and of the check cell after it, and shows its source (the course version hides it so a
student can try first). Everything else is copied unchanged, outputs
included, so the student still sees every demonstration.

``python -m mpcourse student OUT_DIR`` writes the whole course.

Taught in course/00_setup.ipynb.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT = "### HINT:"
STUB_MESSAGE = "Exercise: write your answer here, then run the check cell below."

_COURSE = Path(__file__).resolve().parents[1] / "course"


def strip_source(source: str) -> str:
    """Replace every solution block of one cell's source by a stub.

    Raises ValueError if the markers are unbalanced or nested.
    """
    out: list[str] = []
    inside = False
    indent = ""
    hints: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"line {number}: {BEGIN!r} inside another solution block")
            inside, indent, hints = True, line[: len(line) - len(line.lstrip())], []
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"line {number}: {END!r} without a matching {BEGIN!r}")
            out.extend(f"{indent}# Hint: {h}" for h in hints)
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f"{indent}raise NotImplementedError({STUB_MESSAGE!r})")
            inside = False
        elif inside:
            if stripped.startswith(HINT):
                hints.append(stripped[len(HINT) :].strip())
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without a matching {END!r}")
    return "\n".join(out)


def has_solution(cell: nbformat.NotebookNode) -> bool:
    return cell.get("cell_type") == "code" and BEGIN in "".join(cell.get("source", ""))


def strip_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with every solution replaced by a stub (see module docstring)."""
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        if not has_solution(cell):
            continue
        try:
            cell.source = strip_source("".join(cell.source))
        except ValueError as err:
            raise ValueError(f"cell {index}: {err}") from None
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
        if "jupyter" in cell.metadata and not cell.metadata["jupyter"]:
            del cell.metadata["jupyter"]
        check = next((c for c in nb.cells[index + 1 :] if c.cell_type == "code"), None)
        if check is not None and "checks." in "".join(check.source):
            check.outputs = []  # its "Correct: ..." would give the answer away
            check.execution_count = None
    return nb


def write_student_version(source: Path | str | None, out_dir: Path | str) -> list[Path]:
    """Write student copies of the ``NN_*.ipynb`` in ``source`` (default course/) to ``out_dir``."""
    source = Path(source) if source is not None else _COURSE
    if not source.is_dir():
        raise FileNotFoundError(
            f"no course folder at {source}: pass --source pointing at the folder with NN_*.ipynb"
        )
    notebooks = sorted(p for p in source.glob("*.ipynb") if re.match(r"\d\d_", p.name))
    if not notebooks:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {source}")
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise ValueError(
            "OUT_DIR must differ from the course folder: it would overwrite the solutions"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.name
        nbformat.write(strip_solutions(nb), target)
        written.append(target)
    return written
