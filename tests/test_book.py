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


def test_pages_load_nothing_from_the_network(book: Path):
    """Every script, stylesheet, image and font a page loads lies in the book itself
    (hyperlinks to papers and docs are fine: they are read, not loaded)."""
    tag = re.compile(r'<(?:script|img)\b[^>]*\bsrc="(?:https?:)?//[^"]+"[^>]*>|<link\b[^>]*>')
    remote = re.compile(r'\b(?:src|href)="(?:https?:)?//')
    loaded = re.compile(r'rel="(?:stylesheet|icon|preload|modulepreload|prefetch)"')
    for page in [book / "index.html", *sorted((book / "course").glob("*.html"))]:
        html = page.read_text(encoding="utf-8")
        found = [
            t[:120]
            for t in tag.findall(html)
            if remote.search(t) and (not t.startswith("<link") or loaded.search(t))
        ]
        assert not found, f"{page.name} loads from the network: {found}"


def _browser_path() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium found: apt-get install chromium (.ci/run does)")


# Pages with formulas and plots, and the page with the bit explorer's static figure.
OFFLINE_PAGES = ["01_float_formats", "02_fp16_limits", "05_loss_scaling", "14_microscaling"]


def test_math_and_images_render_offline_in_chromium(book: Path):
    """Chromium, every request outside the book refused: formulas are typeset by the
    book's own MathJax, every image loads, no raw ``$...$`` is left in the text."""
    pytest.importorskip("playwright", reason="pip install -e '.[test]' brings Playwright")
    from playwright.sync_api import sync_playwright

    chromium = _browser_path()
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=flags)
        try:
            for stem in OFFLINE_PAGES:
                page = browser.new_page()
                refused: list[str] = []

                def route(r, refused=refused):
                    if r.request.url.startswith("file://"):
                        r.continue_()
                    else:
                        refused.append(r.request.url)
                        r.abort()

                page.route("**/*", route)
                page.goto((book / "course" / f"{stem}.html").as_uri())
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=30_000,
                )
                page.evaluate("() => MathJax.startup.promise")
                typeset = page.locator("mjx-container").count()
                text = page.locator("article").inner_text()
                raw = re.findall(r"\$[^$\n]{1,40}\$", text)
                broken = page.evaluate(
                    "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                    ".map(i => i.src)"
                )
                switch = page.locator("a.mpcourse-langswitch")
                other = switch.get_attribute("href") if switch.count() == 1 else None
                page.close()
                assert other == f"zh/{stem}.html", f"{stem}: no link to the Chinese page"
                assert (book / "course" / "zh" / f"{stem}.html").exists()
                assert typeset > 0, f"{stem}: no formula typeset by MathJax"
                assert not raw, f"{stem}: raw TeX left in the page: {raw[:3]}"
                assert not broken, f"{stem}: images that did not load: {broken[:3]}"
                assert not refused, f"{stem}: the page asked the network for {refused[:3]}"
        finally:
            browser.close()


def test_bit_explorer_is_a_static_figure_in_the_book(book: Path):
    html = (book / "course" / "01_float_formats.html").read_text(encoding="utf-8")
    assert "mpcourse-bit-explorer" in html, "the bit explorer's static figure is missing"
    figure = html.split("mpcourse-bit-explorer", 1)[1].split("</div></div>", 1)[0]
    assert "in JupyterLab to flip" in figure, "the figure does not say it is live in JupyterLab"


def test_the_chinese_edition_is_in_the_book(book: Path):
    """Every chapter has a Chinese page, reached from the Chinese front page."""
    front = (book / "README.zh-CN.html").read_text(encoding="utf-8")
    assert "中文版" in front
    for path in CHAPTERS:
        page = book / "course" / "zh" / (path.stem + ".html")
        assert page.exists(), f"{path.stem}: no Chinese page"
        assert f'href="course/zh/{path.stem}.html"' in front, f"{path.stem} not linked"
        chinese = re.findall(r"[\u4e00-\u9fff]", page.read_text(encoding="utf-8"))
        assert len(chinese) > 200, f"{path.stem}: the Chinese page is not in Chinese"
