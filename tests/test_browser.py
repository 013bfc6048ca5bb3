"""The course in JupyterLab, in a real browser: Debian's Chromium driven by Playwright.

The README's "open the course" command is started (plus what a headless test needs:
a free port, a token, no browser of its own), on a copy of the course with its
outputs cleared; chapters are opened and run with Run > Run All Cells, as a
student does, then saved: every code cell must have run, with no error and no
stderr output, and the browser console must show no error. Screenshots are kept
in build/screenshots/ (CI keeps them as artifacts).

Skipped, with the reason, when no Chromium or Playwright is installed; .ci/run
installs both, so CI always runs it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
TOKEN = "mpcourse-browser-test"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium found: apt-get install chromium (.ci/run does)")


def readme_open_command() -> list[str]:
    """The ``jupyter lab ...`` part of the README's "open the course" command."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- open-command -->", 1)[1].split("```bash\n", 1)[1].split("\n```")[0]
    command = block.split("&&")[-1].strip()
    assert command.startswith("jupyter lab"), command
    return shlex.split(command)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cleared_copy(source: Path, target: Path) -> None:
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, target)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab started with the README's command in a copy of the project."""
    pytest.importorskip("playwright", reason="pip install -e '.[test]' brings Playwright")
    chromium = _chromium()
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "README.md", project / "README.md")
    (project / "course").mkdir()
    for path in sorted((ROOT / "course").glob("[0-9][0-9]_*.ipynb")):
        _cleared_copy(path, project / "course" / path.name)
    from mpcourse.grading import write_student_version

    write_student_version(project / "student")  # nbgrader generate_assignment, every chapter
    port = _free_port()
    command = readme_open_command()
    extra = ["--no-browser", f"--port={port}", f"--IdentityProvider.token={TOKEN}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        extra.append("--allow-root")  # CI runs as root; a student does not
    env = dict(os.environ, JUPYTERLAB_WORKSPACES_DIR=str(project / ".workspaces"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", *command[2:], *extra],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {' '.join(command)}")
            time.sleep(0.5)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield {"base": base, "project": project, "browser": browser}
        finally:
            browser.close()
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def run_all(lab, relpath: str, shot: str):
    """Open a notebook in a fresh workspace, Run All Cells, wait, save; return (page, errors)."""
    page = lab["browser"].new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    workspace = shot.replace(".", "-")
    page.goto(f"{lab['base']}/lab/workspaces/{workspace}/tree/{relpath}?reset&token={TOKEN}")
    page.wait_for_selector(
        f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']",
        state="attached",
        timeout=90_000,
    )
    # The kernel must be connected before Run All, or the cells are "run" with no kernel.
    page.wait_for_selector(".jp-StatusBar-Widget:has-text('| Idle')", timeout=90_000)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    # Done when the kernel is idle again with no cell queued or running ("[*]") and at
    # least one cell run; cells an error left unrun show "[ ]" and are caught below.
    page.wait_for_function(
        f"""() => {{
          const prompts = [...document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputPrompt')]
            .map(e => e.textContent.trim());
          const idle = document.querySelector(
            '{PANEL} .jp-Notebook-ExecutionIndicator[data-status="idle"]');
          return idle && prompts.some(t => /^\\[\\d+\\]:$/.test(t)) && !prompts.includes('[*]:');
        }}""",
        timeout=240_000,
        polling=500,
    )
    page.keyboard.press("Control+s")
    page.wait_for_selector("text=Saving completed", timeout=30_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{shot}.png"))
    return page, errors


def assert_ran_cleanly(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unrun = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unrun, f"{path.name}: code cells {unrun} did not run"
    for i, cell in enumerate(code):
        for out in cell.outputs:
            assert out.output_type != "error", f"{path.name} cell {i}: {out.ename}: {out.evalue}"
            assert out.get("name") != "stderr", f"{path.name} cell {i} wrote to stderr: {out.text}"


@pytest.mark.parametrize("relpath", ["course/00_setup.ipynb", "student/05_loss_scaling.ipynb"])
def test_run_all_in_jupyterlab(lab, relpath: str):
    page, errors = run_all(
        lab, relpath, Path(relpath).stem + ("-student" if "student" in relpath else "")
    )
    page.close()
    assert_ran_cleanly(lab["project"] / relpath)
    assert errors == [], f"browser console errors: {errors}"


def _rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_bit_explorer_in_the_browser(lab):
    """Chapter 01's bit explorer, used as a student does: flip the sign bit, switch the
    format, type a value; the bits, the value box and the field colours follow."""
    from mpcourse.explorer import FIELD_COLORS, OFF_COLOR
    from mpcourse.formats import BF16, FP16, bit_string

    page, errors = run_all(lab, "course/01_float_formats.ipynb", "01_float_formats")
    assert_ran_cleanly(lab["project"] / "course" / "01_float_formats.ipynb")
    explorer = page.locator(f"{PANEL} .widget-vbox:has(.widget-dropdown)").last
    explorer.scroll_into_view_if_needed()
    buttons = explorer.locator(".widget-hbox .widget-button")
    value_box = explorer.locator(".widget-text input")

    def shown() -> tuple[str, str, list[str]]:
        # textContent, not innerText: JupyterLab skips rendering off-screen cells
        bits = "".join(t.strip() for t in buttons.all_text_contents())
        colors = [b.evaluate("e => getComputedStyle(e).backgroundColor") for b in buttons.all()]
        return bits, value_box.input_value(), colors

    def expected_colors(bits: str, exponent_bits: int) -> list[str]:
        fields = ["sign"] + ["exponent"] * exponent_bits
        fields += ["mantissa"] * (len(bits) - 1 - exponent_bits)
        return [
            _rgb(FIELD_COLORS[f]) if b == "1" else _rgb(OFF_COLOR) for f, b in zip(fields, bits)
        ]

    def expect(value: float, fmt, text: str) -> None:
        bits = bit_string(value, fmt).replace(" ", "")
        page.wait_for_function(
            "([sel, want]) => [...document.querySelectorAll(sel)].map(e => e.textContent)"
            ".join('').includes(want)",
            arg=[f"{PANEL} .widget-vbox:has(.widget-dropdown) .widget-hbox .widget-button", bits],
            timeout=30_000,
        )
        got_bits, got_text, colors = shown()
        assert got_bits == bits and got_text == text, (got_bits, got_text)
        assert colors == expected_colors(bits, fmt.exponent_bits), colors

    expect(1.0, FP16, "1.0")
    buttons.first.click()  # the sign bit
    expect(-1.0, FP16, "-1.0")
    explorer.locator(".widget-dropdown select").select_option("BF16")
    expect(-1.0, BF16, "-1.0")
    value_box.fill("0.1")
    value_box.press("Enter")
    expect(0.1, BF16, "0.10009765625")
    SHOTS.mkdir(parents=True, exist_ok=True)
    explorer.screenshot(path=str(SHOTS / "01-bit-explorer.png"))
    page.close()
    assert errors == [], f"browser console errors: {errors}"
