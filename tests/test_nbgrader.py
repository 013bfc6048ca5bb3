"""The course in nbgrader, end to end, with nbgrader's own commands.

In a temporary nbgrader course directory (``mpcourse.grading.make_course_dir``) holding
chapter 01's exercises: ``nbgrader generate_assignment`` writes the student version, which
runs to the end as JupyterLab's *Run All* does (nbclient, stopping at the first error) with
each check saying "Not answered yet" in one line; ``nbgrader autograde`` gives the course's
own solutions full marks and a submission with typical mistakes (one exercise left
unanswered, one wrong) partial marks; ``nbgrader generate_feedback`` shows the checks'
one-line messages. To keep it fast, the chapter is cut to its first code cell and its
exercises section (the exercises use nothing else; nbval runs the whole chapter).
"""

import getpass
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from mpcourse.grading import (
    BEGIN,
    BEGIN_HIDDEN,
    END,
    chapter_id,
    exercises,
    main,
    make_course_dir,
    mark_cells,
    write_student_version,
)
from mpcourse.student import output_text

COURSE = Path(__file__).resolve().parents[1] / "course"
CHAPTER = "01_float_formats"
BIN = Path(sys.executable).parent  # nbgrader runs `alembic` from the environment's bin/


def nbgrader(root: Path, *args: str) -> str:
    """Run ``nbgrader ARGS`` in ``root``, as from a shell there, in this process (nbgrader's
    own test helper; a new process would cost seconds of imports per command)."""
    from nbgrader.tests import run_nbgrader

    cwd, path = os.getcwd(), os.environ.get("PATH", "")
    os.chdir(root)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{path}"
    try:
        log = run_nbgrader(list(args))  # raises unless the command succeeds
    finally:
        os.chdir(cwd)
        os.environ["PATH"] = path
    assert "ERROR" not in log, log
    return log


def short_chapter() -> nbformat.NotebookNode:
    """Chapter 01 cut to its first code cell and its exercises section."""
    nb = nbformat.read(COURSE / f"{CHAPTER}.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    start = next(i for i, c in enumerate(nb.cells) if "## Exercises" in c.source)
    nb.cells = [nb.cells[first]] + nb.cells[start:]
    return nb


def solution_code(source: str) -> str:
    """A student's correct answer: the course's solution without nbgrader's markers."""
    return "\n".join(line for line in source.split("\n") if line.strip() not in (BEGIN, END))


def answer_cells(nb):
    return [a for _, a, _ in exercises_by_meta(nb)]


def exercises_by_meta(nb):
    """(task, answer, check) indices of a released notebook, from nbgrader's metadata."""
    ids = {
        c.metadata["nbgrader"]["grade_id"]: i
        for i, c in enumerate(nb.cells)
        if "nbgrader" in c.metadata
    }
    n = len([k for k in ids if k.endswith("-check")])
    p = chapter_id(CHAPTER)
    return [
        (ids[f"{p}-ex{k}-task"], ids[f"{p}-ex{k}-answer"], ids[f"{p}-ex{k}-check"])
        for k in range(1, n + 1)
    ]


def test_mark_cells_is_idempotent_and_complete():
    nb = nbformat.read(COURSE / f"{CHAPTER}.ipynb", as_version=4)
    once = nbformat.writes(mark_cells(nb, CHAPTER))
    assert nbformat.writes(mark_cells(nb, CHAPTER)) == once
    found = exercises(nb)
    assert len(found) >= 2
    for number, (tasks, answer, check) in enumerate(found, start=1):
        meta = nb.cells[answer].metadata["nbgrader"]
        assert meta == {
            "grade": False,
            "grade_id": f"ch01-ex{number}-answer",
            "locked": False,
            "schema_version": 3,
            "solution": True,
            "task": False,
        }
        meta = nb.cells[check].metadata["nbgrader"]
        assert meta["grade"] and meta["locked"] and meta["points"] == 1 and not meta["solution"]
        assert tasks and all(nb.cells[t].metadata["nbgrader"]["locked"] for t in tasks)
    marked = [c for c in nb.cells if "nbgrader" in c.metadata]
    assert len(marked) == sum(len(t) + 2 for t, _, _ in found)
    # an exercise removed: its cells lose the metadata
    nb.cells[found[-1][1]].source = "answer = 1"
    mark_cells(nb, CHAPTER)
    assert "nbgrader" not in nb.cells[found[-1][1]].metadata
    assert "nbgrader" not in nb.cells[found[-1][2]].metadata


def test_mark_cells_rejects_bad_input(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(f"answer = None\n{BEGIN}\nanswer = 1\n{END}")]
    )
    with pytest.raises(ValueError, match="check cell"):
        mark_cells(nb, "05_x")
    with pytest.raises(ValueError, match="points"):
        mark_cells(nb, "05_x", points=0)
    with pytest.raises(ValueError, match="name"):
        mark_cells(nb, "")
    with pytest.raises(TypeError, match="notebook"):
        mark_cells({"cells": "x"}, "05_x")
    assert chapter_id("course/05_loss_scaling.ipynb") == "ch05"
    quoted = nbformat.v4.new_markdown_cell(f"a solution goes between `{BEGIN}` and `{END}`")
    with pytest.raises(ValueError, match="cell 0 .markdown. contains 'BEGIN SOLUTION'"):
        mark_cells(nbformat.v4.new_notebook(cells=[quoted]), "00_setup")
    # the CLI marks a file in place, outputs untouched
    nb.cells.append(nbformat.v4.new_code_cell("checks.check_x(answer)"))
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="Correct: yes\n")]
    path = tmp_path / "05_x.ipynb"
    nbformat.write(nb, path)
    assert main(["mark", str(path)]) == 0
    marked = nbformat.read(path, as_version=4)
    assert marked.cells[1].metadata["nbgrader"]["grade_id"] == "ch05-ex1-check"
    assert marked.cells[1].outputs == nb.cells[1].outputs


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # inside nbgrader's gradebook
def test_nbgrader_round_trip(tmp_path):
    """One test, so that pytest-xdist does not split (and repeat) the round trip."""
    draft = tmp_path / f"{CHAPTER}.ipynb"
    nbformat.write(short_chapter(), draft)
    course = make_course_dir(tmp_path / "class", [draft])
    nbgrader(course, "generate_assignment", CHAPTER)
    check_student_version(course)
    home = tmp_path / "home"  # a student's folder
    home.mkdir()
    check_autograde_and_feedback(course, home)
    # `python -m mpcourse student` writes the same student version
    (again,) = write_student_version(tmp_path / "student", [draft])
    released = nbformat.read(course / "release" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    assert [c.source for c in nbformat.read(again, as_version=4).cells] == [
        c.source for c in released.cells
    ]


def check_student_version(course):
    released = nbformat.read(course / "release" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    text = "".join(c.source for c in released.cells)
    first = next(c for c in released.cells if c.cell_type == "code")
    assert first.source.startswith("from mpcourse.checks import student_mode")
    assert BEGIN not in text and BEGIN_HIDDEN not in text and "student_mode(False)" not in text
    assert "largest_mantissa" not in text  # ch01 ex2's solution
    ran = NotebookClient(  # Run All: stops at the first cell that raises
        released, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(course)}}
    ).execute()
    code = [c for c in ran.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "Run All stopped early"
    for task, answer, check in exercises_by_meta(ran):
        assert ran.cells[task].metadata["editable"] is False
        assert "source_hidden" not in ran.cells[answer].metadata.get("jupyter", {})
        assert ran.cells[answer].outputs == []
        shown = output_text(ran.cells[check]).strip()
        assert re.fullmatch(r"Not answered yet: [^\n]{10,120}", shown), shown


def check_autograde_and_feedback(course, home):
    """One student gets the assignment through nbgrader's exchange (release_assignment,
    fetch_assignment, submit, collect) and answers everything right; another's submission,
    with typical mistakes, is copied into submitted/ by hand (as after an LMS download)."""
    source = nbformat.read(course / "source" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    exchange = f"--Exchange.root={course / 'exchange'}"
    nbgrader(course, "release_assignment", CHAPTER)
    nbgrader(home, "fetch_assignment", CHAPTER, "--course", "mpcourse", exchange)
    fetched = home / CHAPTER / f"{CHAPTER}.ipynb"
    released = nbformat.read(fetched, as_version=4)
    answers = answer_cells(released)
    correct = nbformat.from_dict(released)
    for i in answers:
        correct.cells[i].source = solution_code(source.cells[i].source)
    nbformat.write(correct, fetched)
    nbgrader(home, "submit", CHAPTER, "--course", "mpcourse", exchange)
    nbgrader(course, "collect", CHAPTER)
    alice = getpass.getuser()  # nbgrader's student id for a submission from this account
    bob = "bob" if alice != "bob" else "robert"
    mistakes = nbformat.from_dict(correct)
    mistakes.cells[answers[0]].source = released.cells[answers[0]].source  # left unanswered
    mistakes.cells[answers[1]].source = "answer = 448.0  # OCP E4M3's max"  # wrong
    target = course / "submitted" / bob / CHAPTER / f"{CHAPTER}.ipynb"
    target.parent.mkdir(parents=True)
    nbformat.write(mistakes, target)
    nbgrader(course, "autograde", CHAPTER)
    nbgrader(course, "generate_feedback", CHAPTER)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        full = gb.find_submission(CHAPTER, alice)
        partial = gb.find_submission(CHAPTER, bob)
        assert full.max_score == len(answers) and full.score == full.max_score
        assert partial.score == len(answers) - 2, partial.score
    html = (course / "feedback" / bob / CHAPTER / f"{CHAPTER}.html").read_text()
    assert "Not answered yet: " in html
    assert "Not correct yet: 448 is OCP E4M3" in html
    assert "most recent call last" not in html and "_core.py" not in html  # no checker frames
    html = (course / "feedback" / alice / CHAPTER / f"{CHAPTER}.html").read_text()
    assert "Not answered yet" not in html and "Not correct yet" not in html
    assert html.count("Correct: ") >= len(answers)
