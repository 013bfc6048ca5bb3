"""The package's size guideline (CONTRIBUTING.md) is true: modules over 400 lines are listed
there with their reason, and every listed module is still long."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 400


def _listed() -> set[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Long modules", 1)[1]
    return set(re.findall(r"^\| `(mpcourse/[\w/]+\.py)` \| \S", section, flags=re.M))


def test_long_modules_are_the_listed_ones():
    long = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "mpcourse").rglob("*.py")
        if len(p.read_text().splitlines()) > LIMIT
    }
    listed = _listed()
    assert not long - listed, (
        f"over {LIMIT} lines but not in CONTRIBUTING.md's 'Long modules' (split it, or add a "
        f"row with the reason): {sorted(long - listed)}"
    )
    assert not listed - long, f"listed as long but no longer over {LIMIT}: {sorted(listed - long)}"


def _backing_modules() -> dict[str, set[str]]:
    """README.md's chapter table: chapter number -> the backing modules it names."""
    rows = re.findall(r"^\| (\d\d) \|.*\|([^|]*)\|\s*$", (ROOT / "README.md").read_text(), re.M)
    return {nn: set(re.findall(r"`(\w+)`", mods)) for nn, mods in rows}


def test_each_check_lives_with_a_backing_module_of_its_chapter():
    """CONTRIBUTING.md's rule: chapter NN's checks are in mpcourse/checks/<m>.py, m one of the
    chapter's backing modules in README.md's table (chapter 00's in checks/setup.py)."""
    backing = _backing_modules()
    backing["00"] = backing.get("00", set()) | {"setup"}
    notebooks = {p.name[:2]: p.read_text() for p in (ROOT / "course").glob("[0-9][0-9]_*.ipynb")}
    misplaced = []
    for path in sorted((ROOT / "mpcourse" / "checks").glob("[a-z]*.py")):
        for name in re.findall(r"^def (check_\w+)\(", path.read_text(), re.M):
            for nn, text in notebooks.items():
                listed = nn in backing  # a chapter gets its README row when it is added
                if listed and f"checks.{name}(" in text and path.stem not in backing[nn]:
                    misplaced.append(f"{name} (chapter {nn}) in checks/{path.name}")
    assert not misplaced, f"checks outside their chapter's backing modules: {misplaced}"
