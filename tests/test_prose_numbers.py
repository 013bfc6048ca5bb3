"""A number quoted in prose must be one a cell printed (issue 20, point 5).

Every decimal with three or more significant digits (``0.950``, ``21.9``, ``1.0234375``) and
every percentage (``94%``, ``0.35%``) in a chapter's markdown quotes a measurement; the test
fails when no code output of that chapter contains it, rounded to the digits the prose shows
(``94%`` matches a printed ``94.30%`` or ``0.943``). A paragraph that names another chapter
("chapter 07", "chapters 03-04") may quote that chapter's outputs too, so a number copied from
another chapter goes stale loudly when that chapter is rebuilt.

Not checked: code spans and URLs (code, not quotes), versions and identifiers (``torch 2.13``,
``arXiv:2412.19437``, compute capability ``10.0``, section numbers), the "Further reading"
list, and the format constants of ``ALLOWED`` (each with the reason it needs no cell).
"""

import json
import re
from pathlib import Path

import pytest

COURSE = Path(__file__).resolve().parent.parent / "course"
CHAPTERS = sorted(COURSE.glob("[0-9][0-9]_*.ipynb"))

# Constants of the formats and of published specifications: exact by definition, not measured.
ALLOWED = {
    "5.96": "2^-24 = 5.96e-8, FP16's smallest subnormal (a format constant)",
    "2.98": "2^-25 = 2.98e-8, half of FP16's smallest subnormal (a format constant)",
    "0.3125": "5/16, a value of chapter 01's toy format (exact by construction)",
    "0.9999": "the largest Adam beta2 an exercise check tries (an input, not a result)",
    "0.999": "Adam's default beta2 and a usual EMA decay (a hyperparameter, an input)",
    "127.5": "torchao's symmetric INT8 scale divisor, amax / 127.5 (quant_primitives.py)",
    "99.9%": "LLM.int8()'s share of INT8 columns, quoted from Dettmers et al. 2022",
    "3.35": "H100 SXM memory bandwidth, 3.35 TB/s, from NVIDIA's data sheet (cited)",
    "100%": "all of a set ('up to 100%'), a bound, not a measurement",
    "25%": "ratio of byte counts fixed by the formats' widths in a ledger",
}

NUMBER = re.compile(r"(?<![\w.^{_-])(\d+\.\d+|\d+)(\s?%)?(?![\w.]*\d)(?!\w)")
OUTPUT_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
CHAPTER_REF = re.compile(r"chapters?\s+(\d\d)(?:\s*(?:-|–|to|and|,)\s*(\d\d))?", re.I)
NOT_A_QUOTE = re.compile(
    r"(torch|pytorch|keras|torchao|python|cuda|cudnn|nccl|rocm|version|release|arxiv:?|"
    r"tensorflow|tf|jax|numpy|transformers|accelerate|lightning|peft|deepspeed|"
    r"section|sections|capability|capabilities|sm|sm_|figure|table|tables|eq\.|v|"
    r"transformer engine|te|iclr|neurips|icml|mx v)\s*[≥>=<≤]*\s*$",
    re.I,
)


def text(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def outputs(path: Path) -> str:
    parts = []
    for cell in json.loads(path.read_text())["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(text({"source": out["text"]}))
            for key in ("text/plain", "text/markdown", "text/html"):
                if key in out.get("data", {}):
                    parts.append(text({"source": out["data"][key]}))
    return "\n".join(parts)


def output_numbers(path: Path) -> list[float]:
    return [float(m) for m in OUTPUT_NUMBER.findall(outputs(path))]


def significant_digits(number: str) -> int:
    return len(number.replace(".", "").lstrip("0"))


def quoted_numbers(markdown: str) -> list[tuple[str, bool]]:
    """(number, is_percentage) for each measurement-like number in a markdown paragraph."""
    md = re.sub(r"`[^`]*`", " ", markdown)  # code spans
    md = re.sub(r"\]\([^)]*\)|https?://\S+", " ", md)  # link targets and URLs
    found = []
    for m in NUMBER.finditer(md):
        number, percent = m.group(1), bool(m.group(2))
        if not percent and ("." not in number or significant_digits(number) < 3):
            continue
        if NOT_A_QUOTE.search(md[max(0, m.start() - 20) : m.start()]):
            continue
        found.append((number, percent))
    return found


def matches(number: str, percent: bool, values: list[float]) -> bool:
    decimals = len(number.split(".")[1]) if "." in number else 0
    target = float(number)
    tolerance = 0.5 * 10**-decimals + 1e-12
    for v in values:
        candidates = (abs(v), 100 * abs(v)) if percent else (abs(v),)
        if any(abs(c - target) <= tolerance for c in candidates):
            return True
    return False


def paragraphs(path: Path) -> list[str]:
    found = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        md = text(cell).split("## Further reading")[0]
        found += [p for p in re.split(r"\n\s*\n|\n(?=\s*[-*] )|\n(?=\|)", md) if p.strip()]
    return found


def stale_numbers(path: Path, cache: dict) -> list[str]:
    def numbers_of(chapter: str) -> list[float]:
        if chapter not in cache:
            match = [p for p in CHAPTERS if p.name.startswith(chapter)]
            cache[chapter] = output_numbers(match[0]) if match else []
        return cache[chapter]

    stale = []
    for paragraph in paragraphs(path):
        chapters = {path.name[:2]}
        for first, last in CHAPTER_REF.findall(paragraph):
            chapters |= {f"{n:02d}" for n in range(int(first), int(last or first) + 1)}
        values = [v for c in sorted(chapters) for v in numbers_of(c)]
        for number, percent in quoted_numbers(paragraph):
            shown = number + ("%" if percent else "")
            if shown in ALLOWED or number in ALLOWED:
                continue
            if not matches(number, percent, values):
                where = ", ".join(sorted(chapters))
                stale.append(f"{path.name}: {shown} (no output of chapter {where} shows it)")
    return stale


def test_extraction_and_matching():
    found = quoted_numbers(
        "reached 0.950 (FP16: 0.947), lost 94% and 0.35%; torch 2.13, capability 10.0, "
        "`lr = 0.001`, 65504, 2^-24, arXiv:2412.19437, [x](https://a.b/1.234)"
    )
    assert found == [("0.950", False), ("0.947", False), ("94", True), ("0.35", True)]
    assert matches("94", True, [0.943]) and matches("94", True, [94.30])
    assert matches("0.950", False, [0.9504]) and not matches("0.947", False, [0.950])
    assert not matches("21.9", False, [1735.2, 0.94])


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_prose_numbers_appear_in_outputs(path):
    stale = stale_numbers(path, {})
    assert not stale, "numbers in prose that no cell printed:\n" + "\n".join(stale)
