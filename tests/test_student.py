"""The student version, made by nbgrader (``mpcourse.grading.write_student_version``, behind
``python -m mpcourse student``): solutions out, everything else intact, checks still helpful."""

import re
from pathlib import Path

import nbformat
import pytest

from mpcourse import checks
from mpcourse.__main__ import main
from mpcourse.checks import _core
from mpcourse.grading import (
    BEGIN,
    BEGIN_HIDDEN,
    END,
    STUDENT_SETUP,
    exercises,
    write_student_version,
)
from mpcourse.student import exercise_cells, switches_mode

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
NOTEBOOKS = sorted(p for p in COURSE.glob("*.ipynb") if re.match(r"\d\d_", p.name))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The student version of every chapter, from one nbgrader run."""
    written = write_student_version(tmp_path_factory.mktemp("student"))
    return {p.name: nbformat.read(p, as_version=4) for p in written}


def test_whole_course_student_version(released):
    assert sorted(released) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        original = nbformat.read(path, as_version=4)
        student = released[path.name]
        assert len(original.cells) == len(student.cells)
        found = exercises(original)
        assert len(found) >= 2, f"{path.name} has fewer than two exercises"
        answers = {answer for _, answer, _ in found}
        check_cells = {check for _, _, check in found}
        first_code = next(i for i, c in enumerate(original.cells) if c.cell_type == "code")
        for index, (before, after) in enumerate(zip(original.cells, student.cells)):
            where = (path.name, index)
            assert before.cell_type == after.cell_type, where
            if index == first_code:  # switches student mode on, then the course's own code
                assert after.source == STUDENT_SETUP + before.source, where
                assert after.outputs == before.outputs, where
            elif index in check_cells:  # the hidden grading switch is gone again
                assert after.source == before.source and BEGIN_HIDDEN not in after.source, where
                assert after.outputs == [], where  # "Correct: ..." would give the answer away
            elif index in answers:
                check_stub(before.source, after.source, where)
                assert after.outputs == [] and after.execution_count is None, where
                assert not after.metadata.get("jupyter", {}).get("source_hidden"), where
            else:  # demonstrations and text: untouched, outputs included
                assert after.source == before.source, where
                assert after.get("outputs") == before.get("outputs"), where


def check_stub(before: str, after: str, where) -> None:
    """The solution is gone; inside a function the stub raises, at the top level it does not."""
    solution = before.split(BEGIN)[1].split(END)[0]
    kept = set(after.splitlines())
    for line in solution.strip().splitlines():
        assert not line.strip() or line not in kept, (where, line)
    assert BEGIN not in after and END not in after and "# YOUR CODE HERE" in after, where
    indent = re.search(rf"^([ \t]*){re.escape(BEGIN)}", before, re.M).group(1)
    raises = [line for line in after.splitlines() if "raise NotImplementedError(" in line]
    if indent:  # a function body: the check calls it and reports "Not answered yet"
        assert [line[: len(indent)] for line in raises] == [indent], (where, after)
    else:  # the top level: Run All must go on, and the check finds `answer is None`
        assert raises == [] and re.match(r"\w+ = None\n", before), (where, after)


def test_stubbed_answers_give_helpful_check_failures(released):
    """Run each stub of chapter 01 and call its check: NotAnswered, never a NameError."""
    nb = released["01_float_formats.ipynb"]
    namespace: dict = {}
    exec("import math, torch\nfrom mpcourse import checks", namespace)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    stubs = [i for i, c in enumerate(cells) if c.metadata.get("nbgrader", {}).get("solution")]
    assert len(stubs) == 4
    top_level = 0
    for i in stubs:
        namespace.pop("answer", None)
        exec(cells[i].source, namespace)  # never raises: a top-level stub leaves answer = None
        top_level += namespace.get("answer", "unset") is None
        with pytest.raises(checks.NotAnswered, match="NotImplementedError|set `answer`"):
            exec(cells[i + 1].source, namespace)
    assert top_level >= 1  # chapter 01 has both kinds of stub


def test_cli_runs_the_same_nbgrader_step(tmp_path, released, capsys):
    source = tmp_path / "course"
    source.mkdir()
    (source / "00_setup.ipynb").write_bytes((COURSE / "00_setup.ipynb").read_bytes())
    (source / "notes.ipynb").write_bytes((COURSE / "00_setup.ipynb").read_bytes())  # not NN_
    assert main(["student", str(tmp_path / "out"), "--source", str(source)]) == 0
    assert capsys.readouterr().out.endswith(
        "1 student notebook(s) written to " + str(tmp_path / "out") + " by nbgrader\n"
    )
    (written,) = (tmp_path / "out").iterdir()
    cli = nbformat.read(written, as_version=4)
    assert [c.source for c in cli.cells] == [c.source for c in released["00_setup.ipynb"].cells]


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "no course folder at .*missing"),
        ("empty", "no NN_\\*.ipynb notebooks in"),
        ("same", "OUT_DIR must differ from the course folder"),
    ],
)
def test_bad_student_arguments(tmp_path, capsys, case, message):
    source = {"missing": tmp_path / "missing", "empty": tmp_path, "same": COURSE}[case]
    out = COURSE if case == "same" else tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["student", str(out), "--source", str(source)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert re.search(f"python -m mpcourse student: error: {message}", err), err
    assert not (tmp_path / "out").exists()


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


def test_only_a_lasting_mode_switch_is_kept_for_the_exercise_run():
    nb = nbformat.v4.new_notebook()
    sources = [
        "from mpcourse import checks\nx = 1",
        "with checks.student_mode():\n    checks.check_nbytes(len)",  # restores the mode
        "y = 2",  # nothing after it reads y
        "checks.student_mode(False)",  # lasts: the exercises run in strict mode
        f"answer = None\n{BEGIN}\nanswer = x\n{END}",
        "checks.check_fp16_max(answer)",
    ]
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    assert switches_mode(sources[3]) and not switches_mode(sources[1])
    assert exercise_cells(nb) == [0, 3, 4, 5]
