"""The course in nbgrader: exercise cells marked for it, and the configuration that releases
the student version and autogrades submissions with nbgrader itself.

Every exercise of a course notebook is three kinds of cells, found from nbgrader's markers:

* its instructions (the markdown cells just before the answer cell): **locked**;
* its answer cell (``### BEGIN SOLUTION`` / ``### END SOLUTION``): a **solution** cell;
* its check cell (the next code cell, ``checks.<name>(answer)``): an **autograded test**
  cell worth ``points`` (1 by default), locked.

:func:`mark_cells` writes that nbgrader metadata (schema version 3) into the notebook, with
``grade_id`` values made from the chapter number and the exercise number
(``ch01-ex2-answer``), so they stay the same from one build to the next.

:func:`configure` sets up nbgrader for the course (``nbgrader_config.py`` calls it); it swaps
two of ``nbgrader generate_assignment``'s preprocessors and adds one in front:

* :class:`PrepareRelease` marks the cells (in case the notebook was not), switches student
  mode on in the first code cell (a failed check then prints one line and returns a false
  value, so JupyterLab's *Run All* reaches the end) and puts a hidden
  ``checks.student_mode(False)`` at the top of every check cell: nbgrader stores the check
  cells with their hidden tests in its gradebook and puts them back at ``autograde``, so
  when grading a wrong answer raises and the cell scores 0, its one-line message
  (``CheckFailed._render_traceback_``) being the feedback;
* :class:`CourseStubs` is nbgrader's ``ClearSolutions`` with a stub that raises
  ``NotImplementedError`` only inside a function body (the check calls the function and
  reports ``Not answered yet``); at the top level (after ``answer = None``) the stub is a
  comment, so the cell runs and the check finds ``answer is None``. It also shows the
  answer cell's source, which the course version collapses;
* :class:`ClearAnswerOutputs` clears the outputs of answer and check cells only (their
  ``Correct: ...`` would give answers away): the student keeps every demonstration's output.

:func:`make_course_dir` writes an nbgrader course directory (``nbgrader_config.py`` and one
assignment per chapter in ``source/``), where a teacher runs nbgrader's own commands::

    python -m mpcourse.grading course classroom/ 01_float_formats 06_autocast
    cd classroom
    nbgrader generate_assignment 01_float_formats    # release/01_float_formats/: student version
    nbgrader autograde 01_float_formats              # submitted/<student>/01_float_formats/
    nbgrader generate_feedback 01_float_formats      # feedback/<student>/...: HTML

``python -m mpcourse.grading mark course/*.ipynb`` (re)marks notebooks in place, touching
only cell metadata. nbgrader runs the ``alembic`` command of its environment: run it with
the course's environment activated (its ``bin/`` on ``PATH``). nbgrader finds a marker
anywhere in a line, so no other cell may contain ``BEGIN SOLUTION`` or ``END SOLUTION``
(:func:`mark_cells` refuses such a notebook).

Taught in course/00_setup.ipynb.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import ClearOutput, ClearSolutions, NbGraderPreprocessor
from traitlets import Dict

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
SCHEMA_VERSION = 3
STUB_MESSAGE = "Exercise: write your answer here, then run the check cell below."
FUNCTION_STUB = f"# YOUR CODE HERE\nraise NotImplementedError({STUB_MESSAGE!r})"
STUDENT_SETUP = (
    "from mpcourse.checks import student_mode\n\n"
    "student_mode()  # student copy: a check reports in one line and never stops Run All\n"
)
GRADING_SWITCH = (
    f"{BEGIN_HIDDEN}\n"
    "checks.student_mode(False)  # autograding: a wrong answer fails this cell\n"
    f"{END_HIDDEN}\n"
)

_COURSE = Path(__file__).resolve().parents[1] / "course"
# nbgrader's ClearSolutions and ClearHiddenTests look for these anywhere in a line
_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
_ALLOWED = {"answer": _MARKERS[:2], "check": _MARKERS[2:]}


def chapter_id(name: str | Path) -> str:
    """``ch01`` for ``01_float_formats`` (or its path); other names, made safe for a grade_id."""
    stem = Path(name).stem
    if not stem:
        raise ValueError(f"a notebook name is needed for its grade ids, got {name!r}")
    match = re.match(r"(\d+)_", stem)
    return f"ch{match.group(1)}" if match else re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def _source(cell: NotebookNode) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def exercises(nb: NotebookNode) -> list[tuple[list[int], int, int]]:
    """``(instruction cells, answer cell, check cell)`` indices of each exercise, in order.

    Raises ValueError when an answer cell is not followed by a check cell.
    """
    found = []
    previous_code = -1
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if BEGIN in _source(cell):
            check = next(
                (j for j in range(index + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"),
                None,
            )
            if check is None or "checks." not in _source(nb.cells[check]):
                raise ValueError(
                    f"cell {index}: an answer cell must be followed by a check cell "
                    f"calling checks.<name>(...), found {check and _source(nb.cells[check])!r}"
                )
            tasks = [
                j for j in range(previous_code + 1, index) if nb.cells[j].cell_type == "markdown"
            ]
            found.append((tasks, index, check))
        previous_code = index
    return found


def _meta(grade_id: str, *, solution: bool, grade: bool, points: float = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": not solution,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = points
    return meta


def mark_cells(nb: NotebookNode, name: str | Path, *, points: float = 1) -> NotebookNode:
    """Give every exercise of ``nb`` its nbgrader metadata (see the module docstring), in
    place; returns ``nb``. Idempotent: cells that are no longer part of an exercise lose
    their ``nbgrader`` metadata. ``name`` is the notebook's name or path (for grade ids)."""
    if not isinstance(getattr(nb, "cells", None), list):
        raise TypeError(f"mark_cells needs an nbformat notebook, got {type(nb).__name__}")
    if not isinstance(points, (int, float)) or isinstance(points, bool) or points <= 0:
        raise ValueError(f"points must be a positive number, got {points!r}")
    prefix = chapter_id(name)
    marks: dict[int, dict[str, Any]] = {}
    for number, (tasks, answer, check) in enumerate(exercises(nb), start=1):
        base = f"{prefix}-ex{number}"
        for k, index in enumerate(tasks):
            suffix = "" if k == 0 else str(k + 1)
            marks[index] = _meta(f"{base}-task{suffix}", solution=False, grade=False)
        marks[answer] = _meta(f"{base}-answer", solution=True, grade=False)
        marks[check] = _meta(f"{base}-check", solution=False, grade=True, points=points)
    for index, cell in enumerate(nb.cells):
        allowed = _ALLOWED.get(marks.get(index, {}).get("grade_id", "").rsplit("-", 1)[-1], ())
        for marker in _MARKERS:
            if marker in _source(cell) and marker not in allowed:
                raise ValueError(
                    f"cell {index} ({cell.cell_type}) contains {marker!r}: nbgrader treats any "
                    "line containing it as a marker; reword it (e.g. 'the ### BEGIN line')"
                )
    for index, cell in enumerate(nb.cells):
        if index in marks:
            cell.metadata["nbgrader"] = marks[index]
        else:
            cell.metadata.pop("nbgrader", None)
    return nb


def mark_file(path: str | Path) -> bool:
    """Mark one notebook file in place (metadata only); returns whether it changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    after = nbformat.writes(mark_cells(nb, path))
    if after != before:
        nbformat.write(nb, path)
    return after != before


def add_grading_switch(cell: NotebookNode) -> NotebookNode:
    """Put the hidden ``checks.student_mode(False)`` at the top of a check cell (once)."""
    if BEGIN_HIDDEN not in _source(cell):
        cell.source = GRADING_SWITCH + _source(cell)
    return cell


class PrepareRelease(NbGraderPreprocessor):
    """First step of ``generate_assignment``: mark the exercises, switch student mode on in
    the first code cell, and add the hidden grading switch to every check cell."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        name = resources.get("unique_key") or resources.get("metadata", {}).get("name", "")
        mark_cells(nb, name)
        first = next((c for c in nb.cells if c.cell_type == "code"), None)
        if first is not None and "student_mode()" not in _source(first):
            first.source = STUDENT_SETUP + _source(first)
        for cell in nb.cells:
            if utils.is_grade(cell):
                add_grading_switch(cell)
        return nb, resources


class CourseStubs(ClearSolutions):
    """nbgrader's ``ClearSolutions``; the stub raises only inside a function body, and the
    answer cell's source is shown."""

    code_stub = Dict(dict(python=FUNCTION_STUB)).tag(config=True)

    def _replace_solution_region(self, cell: NotebookNode, language: str) -> bool:
        replaced = super()._replace_solution_region(cell, language)
        if replaced and cell.cell_type == "code":
            top_level_raise = self.code_stub[language].splitlines()[-1]
            lines = cell.source.split("\n")
            cell.source = "\n".join(line for line in lines if line != top_level_raise)
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)
            if cell.metadata.get("jupyter") == {}:
                del cell.metadata["jupyter"]
        return replaced


class ClearAnswerOutputs(ClearOutput):
    """nbgrader's ``ClearOutput`` for answer and check cells only."""

    def preprocess_cell(
        self, cell: NotebookNode, resources: dict, index: int
    ) -> tuple[NotebookNode, dict]:
        if utils.is_solution(cell) or utils.is_grade(cell):
            return super().preprocess_cell(cell, resources, index)
        return cell, resources


def configure(c: Any, *, timeout: int = 600) -> Any:
    """Configure nbgrader for the course (call it from ``nbgrader_config.py``)."""
    defaults = GenerateAssignment.class_traits()["preprocessors"].default()
    swap = {ClearSolutions: CourseStubs, ClearOutput: ClearAnswerOutputs}
    c.GenerateAssignment.preprocessors = [PrepareRelease] + [swap.get(p, p) for p in defaults]
    c.Execute.timeout = timeout  # seconds per cell when autograding (nbgrader's default: 30)
    return c


CONFIG_TEMPLATE = """\
# nbgrader configuration of the mixed precision course (written by mpcourse.grading).
from mpcourse.grading import configure

c = get_config()  # noqa: F821 - nbgrader provides get_config
configure(c)
c.CourseDirectory.course_id = {course_id!r}
# nbgrader release_assignment / fetch_assignment / submit / collect exchange files here:
c.Exchange.root = {exchange!r}
"""


def make_course_dir(
    root: str | Path,
    chapters: list[str | Path] | None = None,
    *,
    course_id: str = "mpcourse",
    exchange: str | Path | None = None,
) -> Path:
    """Create (or update) an nbgrader course directory at ``root``: ``nbgrader_config.py``
    and ``source/<chapter>/<chapter>.ipynb``, a marked copy of each chapter (default: every
    ``course/NN_*.ipynb``). A chapter is a notebook path or a name in ``course/``."""
    root = Path(root)
    if chapters is None:
        paths = sorted(p for p in _COURSE.glob("*.ipynb") if re.match(r"\d\d_", p.name))
    else:
        paths = []
        for chapter in chapters:
            path = Path(chapter)
            if not path.is_file():
                path = _COURSE / f"{Path(chapter).stem}.ipynb"
            if not path.is_file():
                raise FileNotFoundError(f"no notebook {chapter!r} (a path, or a name in {_COURSE})")
            paths.append(path)
    exchange = Path(exchange) if exchange is not None else root.resolve() / "exchange"
    root.mkdir(parents=True, exist_ok=True)
    config = CONFIG_TEMPLATE.format(course_id=course_id, exchange=str(exchange))
    (root / "nbgrader_config.py").write_text(config)
    for path in paths:
        nb = mark_cells(nbformat.read(path, as_version=4), path)
        target = root / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    return root


def write_student_version(
    out_dir: str | Path, chapters: list[str | Path] | None = None
) -> list[Path]:
    """The student version of chapters (default: all) in ``out_dir``, made by nbgrader's
    ``generate_assignment`` in a temporary course directory (``python -m mpcourse student``)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    out_dir = Path(out_dir)
    if out_dir.resolve() == _COURSE.resolve():
        raise ValueError("OUT_DIR must differ from the course folder: it would overwrite it")
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_course_dir(tmp, chapters)
        config = configure(Config())
        config.CourseDirectory.root = str(root)
        config.Exchange.root = str(root / "exchange")  # unused; nbgrader's default may not exist
        (root / "exchange").mkdir()
        # nbgrader creates its gradebook with the `alembic` command of this environment
        path = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
        try:
            api = NbGraderAPI(CourseDirectory(config=config), config=config)
            for source in sorted((root / "source").iterdir()):
                result = api.generate_assignment(source.name)
                if not result["success"]:
                    raise RuntimeError(
                        f"nbgrader generate_assignment {source.name} failed:\n"
                        + result.get("log", "")
                    )
        finally:
            os.environ["PATH"] = path
        out_dir.mkdir(parents=True, exist_ok=True)
        for notebook in sorted((root / "release").glob("*/*.ipynb")):
            shutil.copyfile(notebook, out_dir / notebook.name)
            written.append(out_dir / notebook.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcourse.grading", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mark", help="write nbgrader metadata into notebooks (metadata only)")
    p.add_argument("paths", nargs="+", type=Path)
    p = sub.add_parser("course", help="create an nbgrader course directory")
    p.add_argument("root", type=Path)
    p.add_argument("chapters", nargs="*", help="chapter names or paths (default: all)")
    p.add_argument("--course-id", default="mpcourse")
    p.add_argument("--exchange", type=Path, default=None, help="default: ROOT/exchange")
    args = parser.parse_args(argv)
    if args.command == "mark":
        failed = 0
        for path in args.paths:
            try:
                print(f"{path}: {'marked' if mark_file(path) else 'unchanged'}")
            except ValueError as err:
                print(f"{path}: not marked: {err}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    else:
        root = make_course_dir(
            args.root, args.chapters or None, course_id=args.course_id, exchange=args.exchange
        )
        print(f"nbgrader course directory: {root} (cd there, then nbgrader generate_assignment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
