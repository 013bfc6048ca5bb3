"""The student version runs in Jupyter: *Run All* reaches the end of every notebook.

The student version is nbgrader's (``mpcourse.grading.write_student_version``, one
``generate_assignment`` run for the whole course per test module). Each student notebook
is executed with nbclient exactly as JupyterLab's Run All does
(top to bottom, stopping at the first cell that raises). To keep the suite fast, only
the cells the student version changes, the cells after them, and the earlier cells they
depend on are run (``mpcourse.student.exercise_cells``); the cells left out are the
course version's, unchanged, which nbval runs. ``MPCOURSE_STUDENT_RUN=full`` runs every
cell instead (about as long as running the whole course).
"""

import os
import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient.exceptions import CellExecutionError

from mpcourse.grading import BEGIN_HIDDEN, add_grading_switch, write_student_version
from mpcourse.student import STUB, exercise_cells, is_answer_cell, output_text, run_notebook

COURSE = Path(__file__).resolve().parents[1] / "course"
NOTEBOOKS = sorted(p for p in COURSE.glob("*.ipynb") if re.match(r"\d\d_", p.name))
FULL = os.environ.get("MPCOURSE_STUDENT_RUN") == "full"
MAX_LINE = 120


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The student version of every chapter, from one nbgrader run."""
    written = write_student_version(tmp_path_factory.mktemp("student"))
    return {p.name: p for p in written}


def student_version(released, name: str) -> nbformat.NotebookNode:
    return nbformat.read(released[name], as_version=4)


@pytest.fixture
def kernel():
    """A fresh kernel per notebook, as when a student opens it: no state (torch flags set by
    another chapter, the checks' mode) leaks from one notebook into the next."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(COURSE))
    yield km
    km.shutdown_kernel(now=True)


def check_after(cells, index: int) -> int | None:
    """Index of the check cell that follows the answer cell at ``index``."""
    return next(
        (j for j in range(index + 1, len(cells)) if cells[j].cell_type == "code"),
        None,
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_all_reaches_the_end(path, released, kernel):
    student = student_version(released, path.name)
    cells = None if FULL else exercise_cells(student)
    ran = run_notebook(student, cells=cells, km=kernel, timeout=600)  # raises on any error
    code = [c for c in ran.cells if c.cell_type == "code"]
    assert code[-1].execution_count is not None, "Run All stopped before the last cell"
    answers = [i for i, c in enumerate(ran.cells) if is_answer_cell(c)]
    assert len(answers) >= 2
    for i in answers:
        assert ran.cells[i].outputs == [], f"answer cell {i} printed: {output_text(ran.cells[i])}"
        j = check_after(ran.cells, i)
        assert j is not None and "checks." in ran.cells[j].source
        shown = output_text(ran.cells[j]).strip()
        assert "\n" not in shown and len(shown) <= MAX_LINE, shown
        assert shown.startswith("Not answered yet: "), shown
        assert "Traceback" not in shown and "NotImplementedError(" not in shown


def _set_answers(nb, replacements: dict[str, str]) -> None:
    """Replace the student's stub in the answer cell that defines ``name``."""
    for cell in nb.cells:
        for name, code in replacements.items():
            if is_answer_cell(cell) and re.search(rf"^(def )?{name}\b", cell.source, re.M):
                cell.source = f"{STUB}\n{code}"  # the student wrote below the stub's comment


def test_wrong_answers_and_student_errors_get_one_line(released, kernel):
    """Chapter 01 as a student who got things wrong: every check says so in one line,
    a crash in the student's own function is shown briefly (their line, not the checker's),
    and Run All still reaches the end."""
    student = student_version(released, "01_float_formats.ipynb")
    _set_answers(
        student,
        {
            "decode_fp16": "def decode_fp16(bits):\n    parts = bits.split()\n"
            "    return parts[5]\n",
            "answer": "answer = 448.0\n",
            "round_toy": "def round_toy(x):\n    return x\n",
            "limits": "def limits(E, M, finite=False):\n    return {'max': 1.0}\n",
        },
    )
    ran = run_notebook(student, cells=exercise_cells(student), km=kernel)
    shown = [
        output_text(ran.cells[check_after(ran.cells, i)]).strip()
        for i, c in enumerate(ran.cells)
        if is_answer_cell(c)
    ]
    assert all("\n" not in s and s.startswith("Not correct yet: ") for s in shown), shown
    assert "IndexError" in shown[0] and "parts[5]" in shown[0]  # the student's own line
    assert all("mpcourse" not in s and "Traceback" not in s for s in shown), shown
    assert "448 is OCP E4M3" in shown[1]  # names the mistake


def test_nbgrader_hidden_tests_make_a_failing_check_raise_one_line(released, kernel):
    """nbgrader keeps a hidden ``checks.student_mode(False)`` at the top of each check cell for
    autograding and removes it from the student version: there an unanswered exercise
    reports; in autograding it raises (the grade fails) and shows one line, no traceback."""
    student = student_version(released, "01_float_formats.ipynb")
    graded = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert len(graded) == 4 and not any(BEGIN_HIDDEN in c.source for c in graded)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from mpcourse import checks\nchecks.student_mode()\nanswer = None\n" + STUB
        ),
        nbformat.v4.new_code_cell("checks.check_e4m3_max(answer)"),
    ]
    out = run_notebook(nb, km=kernel)  # as released: reports, no raise
    assert output_text(out.cells[1]).startswith("Not answered yet: ")
    add_grading_switch(nb.cells[1])  # as nbgrader autograde puts it back
    with pytest.raises(CellExecutionError) as info:
        run_notebook(nb, km=kernel)
    assert info.value.ename == "NotAnswered"
    shown = info.value.traceback.split("-" * 18)[-1].strip()  # what the kernel displayed
    assert shown.startswith("Not answered yet: ") and "\n" not in shown, shown  # no frames
