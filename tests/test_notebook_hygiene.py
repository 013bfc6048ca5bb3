"""Every chapter notebook follows the template and was executed once, top to bottom.

The template (objectives, prerequisites, time, numbered sections, at least two
exercises with hidden solutions and checks, summary, further reading) is
described in CONTRIBUTING.md.
"""

import json
import re
from pathlib import Path

import pytest

from mpcourse.student import BEGIN, END

COURSE = Path(__file__).resolve().parents[1] / "course"
NOTEBOOKS = sorted(p for p in COURSE.glob("*.ipynb") if re.match(r"\d\d_", p.name))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def tags(cell: dict) -> list:
    return cell.get("metadata", {}).get("tags", [])


def test_there_are_chapters():
    assert [p.name[:2] for p in NOTEBOOKS[:2]] == ["00", "01"]
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers)), "chapter numbers must be unique"


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def nb(request):
    return request.param, load(request.param)


def test_executed_once_in_order_without_errors(nb):
    path, data = nb
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: not executed once top to bottom (rebuild with tools/build_notebook.py)"
    )
    for i, cell in enumerate(code):
        errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
        if errors:
            assert "raises-exception" in tags(cell), (
                f"{path.name}: code cell {i} has an error output"
            )
        elif "raises-exception" in tags(cell):
            pytest.fail(f"{path.name}: code cell {i} is tagged raises-exception but raised nothing")


def test_template_sections(nb):
    path, data = nb
    md = "\n".join(source(c) for c in data["cells"] if c["cell_type"] == "markdown")
    first = source(data["cells"][0])
    assert re.match(rf"# {path.name[:2]} · \S", first), f"{path.name}: title '# NN · Title' first"
    for heading in (
        "## Learning objectives",
        "**Prerequisites:**",
        "**Estimated time:**",
        "## Exercises",
        "## Summary",
        "## Further reading",
    ):
        assert heading in md, f"{path.name}: missing {heading!r}"
    after = md.split("## Learning objectives", 1)[1].lstrip("\n").split("\n\n")[0]
    n_objectives = len([line for line in after.splitlines() if line.startswith("- ")])
    assert 3 <= n_objectives <= 5, f"{path.name}: {n_objectives} learning objectives (want 3-5)"
    assert "**CPU or GPU?**" in md, f"{path.name}: missing the shared CPU/GPU note"
    numbered = re.findall(r"^## (\d+)\. ", md, re.M)
    assert numbered and numbered == [str(i) for i in range(1, len(numbered) + 1)], (
        f"{path.name}: sections must be numbered ## 1. ... ## n."
    )
    order = [
        md.index(h)
        for h in (
            "## Learning objectives",
            "## 1. ",
            "## Exercises",
            "## Summary",
            "## Further reading",
        )
    ]
    assert order == sorted(order), f"{path.name}: sections out of template order"


def test_exercises_have_hidden_solutions_and_checks(nb):
    path, data = nb
    cells = data["cells"]
    answers = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and BEGIN in source(c)]
    assert len(answers) >= 2, f"{path.name}: at least two exercises with solutions"
    for i in answers:
        assert END in source(cells[i])
        assert cells[i]["metadata"].get("jupyter", {}).get("source_hidden") is True, (
            f"{path.name}: answer cell {i} should be collapsed (jupyter.source_hidden)"
        )
        following = [c for c in cells[i + 1 :] if c["cell_type"] == "code"][:1]
        assert following and "checks." in source(following[0]), (
            f"{path.name}: answer cell {i} must be followed by a check cell calling checks.<name>"
        )


def test_notebooks_use_the_package_not_hard_coded_devices(nb):
    path, data = nb
    code = "\n".join(source(c) for c in data["cells"] if c["cell_type"] == "code")
    assert "from mpcourse" in code or "import mpcourse" in code
    hard_coded = (
        r"\.cuda\(\)",  # model.cuda()
        r"torch\.cuda\.amp",  # deprecated spelling of torch.amp
        r"\.to\(\s*['\"]cuda",  # x.to("cuda")
        r"device\s*=\s*['\"]cuda",  # device="cuda"
        r"['\"]cuda['\"]\s+if\s+torch\.cuda\.is_available",  # the recipe's one-liner
        r"torch\.cuda\.synchronize",  # use mpcourse.device.synchronize
    )
    for pattern in hard_coded:
        assert not re.search(pattern, code), (
            f"{path.name}: hard-coded {pattern}: use mpcourse.device"
        )
    assert "seed_everything(" in code or "setup_chapter(" in code, (
        f"{path.name}: seed with mpcourse.device.setup_chapter (or seed_everything)"
    )


def test_ignored_outputs_are_few(nb):
    path, data = nb
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    ignored = [c for c in code if "nbval-ignore-output" in tags(c)]
    assert len(ignored) <= max(3, len(code) // 3), (
        f"{path.name}: too many nbval-ignore-output cells"
    )


def test_no_stray_paths_or_reruns(nb):
    path, data = nb
    cells = [
        {**c, "outputs": [o for o in c.get("outputs", []) if o["output_type"] != "error"]}
        for c in data["cells"]
    ]
    text = json.dumps(cells)
    assert "/work/" not in text and "/home/" not in text, f"{path.name}: local path in outputs"
    assert data["metadata"].get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbgrader_metadata_is_current(path):
    """Every exercise carries nbgrader's cell metadata, as mpcourse.grading derives it."""
    import nbformat

    from mpcourse.grading import mark_cells

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    assert nbformat.writes(mark_cells(nb, path)) == before, (
        f"run: python -m mpcourse.grading mark {path.relative_to(COURSE.parent)}"
    )
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert len(graded) == len(answers) >= 2, "at least two exercises, each an answer and a check"


def nonblank_lines(cell: dict) -> int:
    return sum(1 for line in source(cell).splitlines() if line.strip())


def test_notebooks_are_thin():
    """Issue 25, point 1, counted as the before-stop hook counts (solution cells left out):
    at most 15% of code cells over 15 non-blank lines, none over 30, every first code cell
    at most 12."""
    total, over15, over30, long_first = 0, [], [], []
    for path in NOTEBOOKS:
        code = [c for c in load(path)["cells"] if c["cell_type"] == "code"]
        for k, cell in enumerate(code):
            n = nonblank_lines(cell)
            if k == 0 and n > 12:
                long_first.append(f"{path.name}: first code cell has {n} lines (at most 12)")
            if "BEGIN SOLUTION" in source(cell):
                continue
            total += 1
            where = f"{path.name} code cell {k}: {n} lines"
            over15 += [where] if n > 15 else []
            over30 += [where] if n > 30 else []
    problems = long_first + [f"{w} (at most 30)" for w in over30]
    if len(over15) > 0.15 * total:
        problems.append(f"{len(over15)} of {total} code cells over 15 lines (at most 15%)")
    assert not problems, "\n".join(problems)


def stated_minutes(path: Path) -> int | None:
    md = "\n".join(source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown")
    m = re.search(r"\*\*Estimated time:\*\*\s*(?:about\s+)?(\d+)\s*min", md)
    return int(m.group(1)) if m else None


def test_chapter_00_lists_every_chapter_with_its_time():
    """Issue 25, point 3: chapter 00's learning path names every chapter, with the time the
    chapter itself states (so the two cannot drift apart)."""
    setup = next(p for p in NOTEBOOKS if p.name.startswith("00_"))
    md = "\n".join(source(c) for c in load(setup)["cells"] if c["cell_type"] == "markdown")
    listed = {
        n: int(t) for n, t in re.findall(r"^\|[^|\n]*\|\s*(\d\d) [^|\n]*\|\s*(\d+) min", md, re.M)
    }
    stated = {p.name[:2]: stated_minutes(p) for p in NOTEBOOKS}
    assert set(listed) == set(stated), (
        f"chapter 00 lists {sorted(listed)}, course has {sorted(stated)}"
    )
    wrong = {n: (listed[n], stated[n]) for n in stated if listed[n] != stated[n]}
    assert not wrong, f"chapter 00's time vs the chapter's own (minutes): {wrong}"
