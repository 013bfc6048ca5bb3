"""Sphinx configuration of the course's static book (committed outputs, no execution).

Build it, offline, from the repository root:

    python -m sphinx -W -b html -c tools/book . build/book

The sources are the README (the book's front page, with the chapter table),
README.zh-CN.md (the Chinese edition's front page), CONTRIBUTING.md, every notebook in
course/ and its Chinese edition in course/zh/, rendered by myst-nb with the
outputs they were committed with: nothing is re-executed, nothing is fetched.
Open build/book/index.html.
"""

import shutil
from pathlib import Path

project = "mpcourse: mixed precision training, from the bits up"
author = "mpcourse developers"
# Math is rendered by MathJax 3 served from the book's own _static/ (sphinx-mathjax-offline
# ships it): an offline reader sees formulas, not raw TeX, and nothing is fetched.
extensions = ["myst_nb", "sphinx-mathjax-offline"]
myst_enable_extensions = ["dollarmath", "amsmath"]
root_doc = "README"
include_patterns = [
    "README.md",
    "README.zh-CN.md",
    "CONTRIBUTING.md",
    "course/[0-9][0-9]_*.ipynb",
    "course/zh/[0-9][0-9]_*.ipynb",  # the Chinese edition (mpcourse.i18n)
]
exclude_patterns = ["build", ".venv", "**/.ipynb_checkpoints"]
nb_execution_mode = "off"  # the committed outputs are the book's outputs
nb_merge_streams = True
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]  # widget views: shown live in JupyterLab
# Widgets are live in JupyterLab only: the book shows their static twin (the text/html
# the bit explorer puts beside its widget view) and loads no widget JavaScript from a CDN.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
html_theme = "sphinx_book_theme"
html_title = "mpcourse"
html_theme_options = {"show_toc_level": 2}
html_static_path = ["_static"]  # tools/book/_static
html_js_files = ["langswitch.js"]  # chapter pages link to the other language


def _add_toctree(app, docname: str, source: list[str]) -> None:
    """The README is the front page: give it a hidden table of contents (chapters in
    order, then CONTRIBUTING), so that GitHub still shows the README unchanged."""
    if docname == "README":
        source[0] += (
            "\n\n```{toctree}\n:hidden:\n:glob:\n\ncourse/*\nREADME.zh-CN\nCONTRIBUTING\n```\n"
        )
    elif docname == "README.zh-CN":  # the Chinese front page and its chapters
        source[0] += "\n\n```{toctree}\n:hidden:\n:glob:\n\ncourse/zh/*\n```\n"


def _index_page(app, exception) -> None:
    """Serve the front page as index.html too (README.html is Sphinx's name for it)."""
    out = Path(app.outdir)
    if exception is None and app.builder.format == "html" and (out / "README.html").exists():
        shutil.copy(out / "README.html", out / "index.html")


def setup(app):
    app.connect("source-read", _add_toctree)
    app.connect("build-finished", _index_page)
