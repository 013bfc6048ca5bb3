"""The Chinese edition (中文版): complete, current, and the English notebooks but for the words.

Checked by comparison, not by running it again: a Chinese notebook is its English
notebook with the markdown replaced (code cells, outputs, tags and nbgrader metadata
identical), so nbval on the English notebooks proves its code, and its student version
is nbgrader's student version of the English one with the same code cells.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from mpcourse import i18n
from mpcourse.student import BEGIN, END

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = i18n.chapters()
GLOSSARY = yaml.safe_load((ROOT / "course/i18n/zh_CN/glossary.yaml").read_text(encoding="utf-8"))
TEMPLATE = ["学习目标（Learning objectives）", "练习（Exercises）", "小结（Summary）"]


def entries(notebook: Path) -> dict[str, dict]:
    return i18n.load(i18n.catalogue_path(notebook))


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem[:2])
def test_every_markdown_cell_has_a_current_translation(notebook: Path):
    st = i18n.status(notebook)
    assert st.ok, f"{st} (python -m mpcourse.i18n sync {notebook.stem[:2]}, translate, accept)"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem[:2])
def test_chinese_notebook_is_the_english_one_with_its_markdown_translated(notebook: Path):
    target = i18n.target_path(notebook)
    assert target.exists(), f"no {target.name} in course/zh: python -m mpcourse.i18n build"
    assert target.read_text(encoding="utf-8") == i18n.dumps(i18n.translate(notebook)), (
        f"course/zh/{target.name} is out of date: python -m mpcourse.i18n build"
    )
    en, zh = (json.loads(p.read_text(encoding="utf-8")) for p in (notebook, target))
    assert [c["cell_type"] for c in en["cells"]] == [c["cell_type"] for c in zh["cells"]]
    for a, b in zip(en["cells"], zh["cells"]):
        assert a["metadata"] == b["metadata"] and a["id"] == b["id"]
        if a["cell_type"] == "code":
            assert a == b, f"{target.name} {a['id']}: code cells must be identical"


def _kept(text: str) -> list[str]:
    """What a translation must carry over verbatim: inline code, math, link targets,
    and numbers written with digits."""
    fences = re.findall(r"```.*?```", text, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    span = r"(`+)(?!`).+?(?<!`)\1(?!`)"  # a code span (it may wrap across lines)
    code = [m.group(0) for m in re.finditer(span, text, flags=re.S)]
    math = re.findall(r"\$\$.+?\$\$|\$[^$\n]+\$", text, flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    rest = re.sub(span + r"|\$\$.+?\$\$|\$[^$\n]+\$|\]\([^)]*\)", " ", text, flags=re.S)
    numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", rest)
    return [_flat(k) for k in fences + code + math + links + numbers]


def _flat(text: str) -> str:
    """Line breaks inside a span are spaces (Markdown), or nothing between CJK characters."""
    return re.sub(r"\s*\n\s*", " ", text)


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem[:2])
def test_translations_keep_code_math_links_and_numbers(notebook: Path):
    problems = []
    for cid, entry in entries(notebook).items():
        text = entry.get("text") or ""
        flat = _flat(text)
        missing = sorted({k for k in _kept(entry["en"]) if k not in flat})
        if text and missing:
            problems.append(f"{cid}: {missing[:4]}")
    assert not problems, f"{notebook.stem}: translations lost " + "; ".join(problems[:5])


def _prose(text: str) -> str:
    """The English a reader reads as prose: no code, math, URLs or quoted titles."""
    text = re.sub(r"```.*?```|`[^`\n]+`|\$\$.+?\$\$|\$[^$\n]+\$", " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)|https?://\S+", " ", text)
    return re.sub(r"\*[^*\n]+\*|\"[^\"\n]+\"|“[^”\n]+”", " ", text)


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem[:2])
def test_glossary_terms_are_used_consistently(notebook: Path):
    problems = []
    for cid, entry in entries(notebook).items():
        prose, text = _prose(entry["en"]), entry.get("text") or ""
        for term in GLOSSARY:
            words = [term["zh"], *term.get("also", [])]
            if re.search(term["en"], prose, flags=re.I) and not any(w in text for w in words):
                problems.append(f"{cid}: {term['en']!r} -> {term['zh']}")
    assert not problems, f"{notebook.stem}: glossary terms not used: " + "; ".join(problems[:6])


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem[:2])
def test_template_headings_and_no_solution_markers(notebook: Path):
    text = "\n".join(e.get("text") or "" for e in entries(notebook).values())
    for heading in TEMPLATE:
        assert heading in text, f"{notebook.stem}: no heading {heading!r}"
    assert BEGIN not in text and END not in text, "nbgrader's markers belong to answer cells"


def test_glossary_has_the_seeds_terms_once_each():
    seed = ROOT.parent / "shared" / "seed" / "000_b46d46f6e8ca6160.txt"
    zh = [t["zh"] for t in GLOSSARY]
    assert len(zh) == len(set(zh)), "one Chinese term per English term"
    marked = [t["zh"] for t in GLOSSARY if t.get("seed")]
    assert len(marked) == 7
    if seed.exists():  # the seed sits beside the repository in the course's workspace
        text = seed.read_text(encoding="utf-8")
        assert all(term in text for term in marked), "a seed term the seed does not use"


def test_student_version_of_the_chinese_edition_has_the_english_code(tmp_path: Path):
    """nbgrader's student version of each Chinese chapter has exactly the code cells of
    the English student version, which tests/test_student_run.py runs to the end."""
    from mpcourse.grading import write_student_version

    zh = write_student_version(tmp_path / "zh", [i18n.target_path(p) for p in CHAPTERS])
    en = {p.name: p for p in write_student_version(tmp_path / "en")}
    assert sorted(p.name for p in zh) == sorted(en)
    for path in zh:
        a, b = (nbformat.read(p, as_version=4) for p in (en[path.name], path))
        code = [[c.source for c in nb.cells if c.cell_type == "code"] for nb in (a, b)]
        assert code[0] == code[1], f"{path.name}: the Chinese student version's code differs"
        assert any(
            c.cell_type == "markdown" and re.search(r"[\u4e00-\u9fff]", c.source) for c in b.cells
        ), f"{path.name}: the Chinese student version is not Chinese"


def test_readme_in_chinese_has_the_same_two_commands():
    readme, zh = (
        (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "README.zh-CN.md")
    )
    for marker in ("open-command", "test-command", "open-command-cpu", "test-command-cpu"):
        block = [
            t.split(f"<!-- {marker} -->", 1)[1].split("```bash\n", 1)[1].split("\n```")[0]
            for t in (readme, zh)
        ]
        assert block[0] == block[1], f"README.zh-CN.md's {marker} differs from README.md's"
    for term in GLOSSARY:
        assert term["zh"] in zh, f"README.zh-CN.md's glossary lacks {term['zh']}"


def _notebook(path: Path, texts: list[str]) -> Path:
    cells = [nbformat.v4.new_markdown_cell(t) for t in texts]
    cells.insert(1, nbformat.v4.new_code_cell("x = 1"))
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:03d}"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def test_sync_marks_changed_english_stale_and_keeps_moved_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(i18n, "COURSE", tmp_path)
    nb = _notebook(tmp_path / "99_demo.ipynb", ["# Title", "Loss scaling."])
    assert i18n.sync(nb).missing == ["cell-000", "cell-002"]
    cat = i18n.load(i18n.catalogue_path(nb))
    cat["cell-000"]["text"], cat["cell-002"]["text"] = "# 标题", "损失缩放。"
    i18n.save(i18n.catalogue_path(nb), cat)
    assert i18n.status(nb).ok
    with pytest.raises(ValueError, match="unknown language"):
        i18n.status(nb, "fr_FR")
    # the English of one cell changes, and a new cell moves the other one down
    _notebook(nb, ["# Title", "New first paragraph.", "Loss scaling, changed."])
    st = i18n.sync(nb)
    assert st.missing == ["cell-002"] and st.stale == ["cell-003"] and not st.orphans
    cat = i18n.load(i18n.catalogue_path(nb))
    assert cat["cell-003"]["en_new"] == "Loss scaling, changed."
    with pytest.raises(ValueError, match="cannot translate"):
        i18n.translate(nb)
    cat["cell-002"]["text"], cat["cell-003"]["text"] = "新的第一段。", "损失缩放（已改）。"
    i18n.save(i18n.catalogue_path(nb), cat)
    i18n.accept(nb, "cell-003")
    assert i18n.status(nb).ok
    out = i18n.translate(nb)
    assert [c["source"] for c in out["cells"]][0] == ["# 标题"]
    assert "".join(out["cells"][1]["source"]) == "x = 1"  # code untouched
    with pytest.raises(ValueError, match="no changed English"):
        i18n.accept(nb, "cell-003")
