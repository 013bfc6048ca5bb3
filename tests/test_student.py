"""The student version: solutions out, everything else intact, checks still helpful."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mpcourse import checks
from mpcourse.checks import _core
from mpcourse.student import (
    BEGIN,
    END,
    STUDENT_SETUP,
    strip_solutions,
    strip_source,
    write_student_version,
)

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"


def test_strip_source_keeps_indentation_hints_and_surrounding_code():
    src = (
        "answer = None\n"
        "def f(x):\n"
        "    y = 1\n"
        "    ### BEGIN SOLUTION\n"
        "    ### HINT: use x twice\n"
        "    return x + x\n"
        "    ### END SOLUTION\n"
        "print('after')"
    )
    out = strip_source(src)
    assert "return x + x" not in out and "BEGIN" not in out
    assert "    # Hint: use x twice\n    # YOUR CODE HERE\n    raise NotImplementedError(" in out
    assert out.startswith("answer = None\ndef f(x):\n    y = 1\n") and out.endswith(
        "print('after')"
    )
    namespace = {}
    exec(out, namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


def test_top_level_stub_does_not_raise_so_run_all_goes_on():
    out = strip_source(f"answer = None\n{BEGIN}\nanswer = 448\n{END}\n")
    namespace = {}
    exec(out, namespace)  # no NotImplementedError at the top level
    assert namespace["answer"] is None and "448" not in out and "# YOUR CODE HERE" in out


def test_hidden_tests_are_removed_as_nbgrader_does():
    src = "check(a)\n### BEGIN HIDDEN TESTS\nstrict()\ncheck(b)\n### END HIDDEN TESTS\nend()"
    assert strip_source(src) == "check(a)\nend()"


@pytest.mark.parametrize(
    "bad,message",
    [
        (f"{BEGIN}\nx = 1\n", "without a matching"),
        (f"x = 1\n{END}\n", "without a matching"),
        (f"{BEGIN}\n{BEGIN}\n{END}\n", "inside another"),
        ("### BEGIN HIDDEN TESTS\nx = 1\n", "without a matching"),
        ("### END HIDDEN TESTS\n", "without a matching"),
    ],
)
def test_unbalanced_markers_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        strip_source(bad)


def test_whole_course_student_version(tmp_path):
    written = write_student_version(COURSE, tmp_path)
    originals = sorted(p for p in COURSE.glob("*.ipynb") if re.match(r"\d\d_", p.name))
    assert [p.name for p in written] == [p.name for p in originals]
    for original_path, student_path in zip(originals, written):
        original = nbformat.read(original_path, as_version=4)
        student = nbformat.read(student_path, as_version=4)
        assert len(original.cells) == len(student.cells)
        n_solutions = 0
        check_cells = set()
        for i, cell in enumerate(original.cells):
            if cell.cell_type == "code" and BEGIN in cell.source:
                nxt = next(
                    j
                    for j in range(i + 1, len(original.cells))
                    if original.cells[j].cell_type == "code"
                )
                check_cells.add(nxt)
        first_code = next(i for i, c in enumerate(original.cells) if c.cell_type == "code")
        for index, (before, after) in enumerate(zip(original.cells, student.cells)):
            if index == first_code:  # switches student mode on, then the course's own code
                assert after.source == STUDENT_SETUP + before.source
                assert after.outputs == before.outputs
            elif index in check_cells:
                assert "checks." in after.source and after.source == before.source
                assert after.outputs == []  # "Correct: ..." would give the answer away
            elif before.cell_type == "code" and BEGIN in before.source:
                n_solutions += 1
                solution = before.source.split(BEGIN)[1].split(END)[0]
                for line in solution.strip().splitlines():
                    if line.strip() and not line.strip().startswith("### HINT"):
                        assert line not in after.source.splitlines(), (student_path.name, line)
                assert "# YOUR CODE HERE" in after.source
                assert after.outputs == [] and after.execution_count is None
                assert not after.metadata.get("jupyter", {}).get("source_hidden")
            else:
                assert before == after  # untouched, outputs included
        assert n_solutions >= 2, f"{original_path.name} has fewer than two exercises"


def test_stubbed_answers_give_helpful_check_failures(tmp_path):
    """Run each stub of chapter 01 and call its check: NotAnswered, never a NameError."""
    nb = strip_solutions(nbformat.read(COURSE / "01_float_formats.ipynb", as_version=4))
    namespace: dict = {}
    exec("import math, torch\nfrom mpcourse import checks", namespace)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    stubs = [i for i, c in enumerate(cells) if "# YOUR CODE HERE" in c.source]
    assert stubs
    for i in stubs:
        exec(cells[i].source, namespace)  # never raises: a top-level stub leaves answer = None
        with pytest.raises(checks.NotAnswered, match="NotImplementedError|set `answer`"):
            exec(cells[i + 1].source, namespace)


def test_cli_writes_student_version(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mpcourse", "student", str(tmp_path / "student")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "student notebook(s) written" in out
    assert (tmp_path / "student" / "01_float_formats.ipynb").exists()


def test_bad_student_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no course folder"):
        write_student_version(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no NN_"):
        write_student_version(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="must differ"):
        write_student_version(COURSE, COURSE)


def test_every_check_is_behind_the_student_switch():
    names = [n for n in dir(checks) if n.startswith("check_")]
    assert len(names) >= 20
    assert all(getattr(getattr(checks, n), "_mpcourse_check", False) for n in names)


def test_strict_mode_raises_one_line_and_student_mode_prints_it(capsys):
    with pytest.raises(checks.NotAnswered) as info:
        checks.check_e4m3_max(None)
    (line,) = info.value._render_traceback_()  # what IPython shows instead of a traceback
    assert line.startswith("Not answered yet: ") and info.value.__traceback__ is not None
    checks.student_mode()
    try:
        result = checks.check_e4m3_max(240.0)
        bad = checks.check_decode(lambda bits: 1 / 0)
        crash = checks.check_format_limits(lambda E, M, finite=False: object())
        good = checks.check_e4m3_max(448.0)
    finally:
        checks.student_mode(False)
    out = capsys.readouterr().out.splitlines()
    assert not result and not bad and not crash and good and not _core.in_student_mode()
    assert out[0].startswith("Not correct yet: 240") and "IEEE" in out[0]
    assert out[1].startswith("Not correct yet: your decode_fp16(") and "ZeroDivisionError" in out[1]
    assert "lambda bits: 1 / 0" in out[1]  # the student's own line, no checker frame
    assert out[2].startswith("Not correct yet: ") and out[3].startswith("Correct: ")
    assert len(out) == 4


def test_a_checker_crash_is_one_line_in_student_mode_and_raises_in_strict(capsys):
    crashing = _core.wrap_check(lambda answer: {}[answer])
    with pytest.raises(KeyError):
        crashing("x")
    checks.student_mode()
    try:
        assert not crashing("x")
    finally:
        checks.student_mode(False)
    out = capsys.readouterr().out
    assert out.startswith("Not correct yet: the check could not run on this answer: KeyError")
    assert out.count("\n") == 1
