"""Running the student version of the course notebooks, as a student's *Run All* does.

nbgrader makes the student version (``nbgrader generate_assignment``, configured by
:mod:`mpcourse.grading`; ``python -m mpcourse student OUT_DIR`` runs that step for the
whole course). In it, an exercise's answer cell holds a stub instead of the solution
between nbgrader's markers, and the student version must survive JupyterLab's
*Run All* (which stops at the first cell that raises):

* a stub inside a function body raises ``NotImplementedError`` only when the check
  calls the function; at the top level (after ``answer = None``) it is a comment, so
  the answer cell runs and the check finds ``answer is None``;
* the first code cell switches ``student_mode()`` on: a failed check prints one line
  and returns a false value instead of raising.

This module analyses and executes such notebooks: :func:`is_answer_cell` finds answer
cells (course or student version), :func:`exercise_cells` the cells a run of the
exercises needs, and :func:`run_notebook` executes a notebook as *Run All* does.

Taught in course/00_setup.ipynb.
"""

from __future__ import annotations

import ast
import builtins
import copy
from pathlib import Path
from typing import Any

import nbformat

__all__ = [
    "BEGIN",
    "BEGIN_HIDDEN",
    "END",
    "STUB",
    "exercise_cells",
    "has_hidden_tests",
    "has_solution",
    "is_answer_cell",
    "run_notebook",
    "switches_mode",
]

# nbgrader's markers (as in mpcourse.grading, which imports nbgrader: slow to import)
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
STUB = "# YOUR CODE HERE"  # the first line of the stub (mpcourse.grading.FUNCTION_STUB)

_COURSE = Path(__file__).resolve().parents[1] / "course"


def _source(cell: nbformat.NotebookNode) -> str:
    return "".join(cell.get("source", ""))


def has_solution(cell: nbformat.NotebookNode) -> bool:
    """A code cell holding a solution between nbgrader's markers (course version)."""
    return cell.get("cell_type") == "code" and BEGIN in _source(cell)


def is_answer_cell(cell: nbformat.NotebookNode) -> bool:
    """An answer cell of the course version (solution markers) or of the student version
    (nbgrader's solution cell metadata, or its stub)."""
    if cell.get("cell_type") != "code":
        return False
    solution = cell.get("metadata", {}).get("nbgrader", {}).get("solution", False)
    return has_solution(cell) or bool(solution) or STUB in _source(cell)


def has_hidden_tests(cell: nbformat.NotebookNode) -> bool:
    """A code cell with nbgrader's hidden tests (course version; the release removes them)."""
    return cell.get("cell_type") == "code" and BEGIN_HIDDEN in _source(cell)


def _parse(source: str) -> ast.Module:
    """The cell's code as Python (IPython's ``%magics`` and ``!commands`` translated)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return ast.parse(TransformerManager().transform_cell(source))


def switches_mode(source: str) -> bool:
    """Whether a cell switches the checks' mode for the cells after it: it calls
    ``student_mode(...)`` other than as ``with checks.student_mode():``, which restores the
    previous mode at the end of its block."""
    tree = _parse(source)
    scoped = {
        id(item.context_expr)
        for node in ast.walk(tree)
        if isinstance(node, (ast.With, ast.AsyncWith))
        for item in node.items
    }
    return any(
        isinstance(node, ast.Call)
        and "student_mode" in (getattr(node.func, "id", None), getattr(node.func, "attr", None))
        and id(node) not in scoped
        for node in ast.walk(tree)
    )


def _names(source: str) -> tuple[set[str], set[str], set[str]]:
    """(names a cell binds or may mutate, names it reads, names it imports) by static
    analysis of its code."""
    tree = _parse(source)
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
    switch the checks' mode (:func:`switches_mode`).
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
        if switches_mode("".join(nb.cells[i].source)):
            keep.add(i)  # it switches the checks' mode: the run must see it
            needed |= read
        elif (bound - (modules - imported)) & needed:  # `torch.manual_seed(0)` binds no name
            keep.add(i)
            needed |= read
    return sorted(keep)


def output_text(cell: nbformat.NotebookNode) -> str:
    """What a student sees under a code cell: its streams, tracebacks and plain-text results."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
        elif "text/plain" in out.get("data", {}):
            parts.append(out.data["text/plain"])
    return "".join(parts)


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
