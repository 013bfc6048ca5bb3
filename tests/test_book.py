"""The static book: built offline from the committed notebooks, warnings as errors."""

from __future__ import annotations

import html as html_lib
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "course").glob("[0-9][0-9]_*.ipynb"))

pytest.importorskip("myst_nb", reason="the book needs the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-c", "tools/book", ".", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_every_chapter_is_a_page_with_its_plots(book: Path):
    assert CHAPTERS, "no chapters found"
    for path in CHAPTERS:
        page = book / "course" / (path.stem + ".html")
        assert page.exists(), f"{path.name} has no page in the book"
        html = page.read_text(encoding="utf-8")
        nb = nbformat.read(path, as_version=4)
        title = nb.cells[0].source.splitlines()[0].lstrip("# ").replace("`", "").strip()
        text = html_lib.unescape(re.sub(r"<[^>]+>", "", html)).replace("\u2019", "'")
        assert title in text, f"{path.name}: title {title!r} missing"
        plots = sum(
            "image/png" in out.get("data", {})
            for cell in nb.cells
            if cell.cell_type == "code"
            for out in cell.get("outputs", [])
        )
        shown = [src for src in re.findall(r'<img[^>]+src="([^"]+)"', html) if "_images/" in src]
        assert len(shown) == plots, f"{path.name}: {plots} plots, {len(shown)} in the book"
        for src in shown:
            assert (page.parent / src).resolve().exists(), f"{path.name}: missing image {src}"


def test_front_page_is_the_readme_with_its_chapter_table(book: Path):
    index = (book / "index.html").read_text(encoding="utf-8")
    assert "Set up (two commands)" in index
    for path in CHAPTERS:
        assert f'href="course/{path.stem}.html"' in index, f"{path.stem} not linked"
    table = index.split("<table", 1)[1].split("</table>", 1)[0]
    for path in CHAPTERS:
        assert f"course/{path.stem}.html" in table, f"chapter table lacks {path.stem}"
