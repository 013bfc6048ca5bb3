"""Student copies of the course notebooks: solutions out, everything else intact.

In a course notebook an exercise's answer cell holds its solution between
nbgrader's markers::

    def decode_fp16(bits):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

:func:`strip_solutions` replaces each marked block by a stub, keeps any
``### HINT: ...`` lines of the block as comments, clears the outputs of that
cell and of the check cell after it, and shows its source (the course version
hides it so a student can try first). Everything else is copied unchanged,
outputs included, so the student still sees every demonstration.

The student version must survive JupyterLab's *Run All* (which stops at the
first cell that raises), so nothing in it raises until the student writes code:

* a stub inside a function body is ``raise NotImplementedError(...)``: it only
  runs when the check calls the function, and the check turns it into
  ``Not answered yet: ...``; a stub at the top level (after ``answer = None``)
  is a comment, so the answer cell runs and the check finds ``answer is None``;
* the first code cell starts with ``student_mode()`` (see
  :mod:`mpcourse.checks._core`): a failed check prints one line and returns a
  false value instead of raising;
* ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` blocks are removed, as
  nbgrader's release step removes them. With nbgrader, a grade cell starts with a
  hidden ``checks.student_mode(False)``, so in autograding a wrong answer raises
  (and shows one line, through ``CheckFailed._render_traceback_``).

For nbgrader (the course uses its markers): nbgrader's ``ClearSolutions`` puts one
``code_stub`` everywhere, and its default, ``raise NotImplementedError()``, would stop
Run All at every top-level answer cell; release the student version with this
module's stubs (:func:`strip_source`), or give nbgrader a stub per indentation.

``python -m mpcourse student OUT_DIR`` writes the whole course;
:func:`run_notebook` executes a student notebook as *Run All* does.

Taught in course/00_setup.ipynb.
"""

from __future__ import annotations

import ast
import builtins
import copy
import re
from pathlib import Path
from typing import Any

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT = "### HINT:"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
STUB = "# YOUR CODE HERE"
STUB_MESSAGE = "Exercise: write your answer here, then run the check cell below."
STUDENT_SETUP = (
    "from mpcourse.checks import student_mode\n\n"
    "student_mode()  # student copy: a check reports in one line and never stops Run All\n"
)

_COURSE = Path(__file__).resolve().parents[1] / "course"


def strip_source(source: str) -> str:
    """Replace every solution block of one cell's source by a stub; drop hidden tests.

    Raises ValueError if the markers are unbalanced or nested.
    """
    out: list[str] = []
    inside = hidden = False
    indent = ""
    hints: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(BEGIN_HIDDEN):
            if hidden or inside:
                raise ValueError(f"line {number}: {BEGIN_HIDDEN!r} inside another block")
            hidden = True
        elif stripped.startswith(END_HIDDEN):
            if not hidden:
                raise ValueError(
                    f"line {number}: {END_HIDDEN!r} without a matching {BEGIN_HIDDEN!r}"
                )
            hidden = False
        elif hidden:
            continue
        elif stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"line {number}: {BEGIN!r} inside another solution block")
            inside, indent, hints = True, line[: len(line) - len(line.lstrip())], []
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"line {number}: {END!r} without a matching {BEGIN!r}")
            out.extend(f"{indent}# Hint: {h}" for h in hints)
            out.append(f"{indent}{STUB}")
            if indent:  # a function body: the check calls it and reports "Not answered yet"
                out.append(f"{indent}raise NotImplementedError({STUB_MESSAGE!r})")
            inside = False
        elif inside:
            if stripped.startswith(HINT):
                hints.append(stripped[len(HINT) :].strip())
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without a matching {END!r}")
    if hidden:
        raise ValueError(f"{BEGIN_HIDDEN!r} without a matching {END_HIDDEN!r}")
    return "\n".join(out)


def has_solution(cell: nbformat.NotebookNode) -> bool:
    return cell.get("cell_type") == "code" and BEGIN in "".join(cell.get("source", ""))


def is_answer_cell(cell: nbformat.NotebookNode) -> bool:
    """An answer cell of the course version (solution markers) or of the student version."""
    return has_solution(cell) or (cell.get("cell_type") == "code" and STUB in "".join(cell.source))


def has_hidden_tests(cell: nbformat.NotebookNode) -> bool:
    return cell.get("cell_type") == "code" and BEGIN_HIDDEN in "".join(cell.get("source", ""))


def strip_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with every solution replaced by a stub (see module docstring)."""
    nb = copy.deepcopy(nb)
    first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first_code is not None and any(has_solution(c) for c in nb.cells):
        first_code.source = STUDENT_SETUP + "".join(first_code.source)
    for index, cell in enumerate(nb.cells):
        if has_hidden_tests(cell):
            cell.source = strip_source("".join(cell.source))
            cell.outputs = []
            cell.execution_count = None
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


def _names(source: str) -> tuple[set[str], set[str], set[str]]:
    """(names a cell binds or may mutate, names it reads, names it imports) by static
    analysis of its code."""
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    bound: set[str] = set()
    read: set[str] = set()
    imported: set[str] = set()
    local: set[str] = set()  # function parameters
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            local.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, ast.Store):
            root = node.value
            while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
                root = root.func if isinstance(root, ast.Call) else root.value
            if isinstance(root, ast.Name):
                bound.add(root.id)  # `model.weight = ...` changes `model`
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                bound.add(func.value.id)  # `model.half()`, `opt.step()`: may change the object
    # a name the cell binds itself is not read from earlier cells (an approximation: if it
    # is wrong, the run fails with a NameError, loudly)
    return bound | imported, read - bound - imported - local - set(dir(builtins)), imported


def exercise_cells(nb: nbformat.NotebookNode) -> list[int]:
    """The code cells *Run All* of a student notebook needs to show that its student part runs.

    That is the first code cell (it switches on student mode), every code cell from the first
    cell the student version changed (an answer cell) to the end, and, before it, the cells
    that bind or mutate a name those cells read (found by static analysis, transitively) or
    switch the checks' mode (``student_mode``).
    The cells left out are copied unchanged from the course version, which nbval runs.
    """
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not code:
        return []
    changed = [i for i in code if is_answer_cell(nb.cells[i]) or has_hidden_tests(nb.cells[i])]
    start = changed[0] if changed else len(nb.cells)
    keep = {code[0]} | {i for i in code if i >= start}
    names = {i: _names("".join(nb.cells[i].source)) for i in code}
    modules = set().union(*(imported for _, _, imported in names.values()))
    needed: set[str] = set()
    for i in keep:
        needed |= names[i][1]
    for i in reversed([i for i in code if code[0] < i < start]):
        bound, read, imported = names[i]
        if "student_mode" in read or "student_mode" in "".join(nb.cells[i].source):
            keep.add(i)  # it switches the checks' mode: the run must see it
            needed |= read
        elif (bound - (modules - imported)) & needed:  # `torch.manual_seed(0)` binds no name
            keep.add(i)
            needed |= read
    return sorted(keep)


def run_notebook(
    nb: nbformat.NotebookNode,
    *,
    cells: list[int] | None = None,
    km: Any = None,
    cwd: Path | str | None = None,
    timeout: int = 600,
) -> nbformat.NotebookNode:
    """Execute a notebook as JupyterLab's *Run All* does: top to bottom, stopping at the
    first cell that raises (nbclient's ``CellExecutionError`` then says which).

    ``cells`` restricts the run to those indices (e.g. :func:`exercise_cells`); ``km`` is
    a started ``jupyter_client`` kernel manager to reuse (its namespace is reset first).
    Returns the executed copy; its code cells hold the outputs the student would see.
    """
    from nbclient import NotebookClient

    run = copy.deepcopy(nb)
    if cells is not None:
        run.cells = [run.cells[i] for i in cells]
    if km is not None:
        run.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    client = NotebookClient(
        run,
        km=km,
        timeout=timeout,
        allow_errors=False,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd or _COURSE)}},
    )
    client.execute()
    if km is not None:
        run.cells.pop(0)
    return run
