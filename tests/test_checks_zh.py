"""The exercise checks in Chinese (MPCOURSE_LANG=zh_CN): every message of mpcourse/checks has an
entry in messages_zh_CN.yaml, and real checks answer in Chinese with the same numbers."""

import ast
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mpcourse import checks
from mpcourse.checks._core import localize
from mpcourse.checks.scaling import expected_trajectory
from mpcourse.formats import FP16, decode

CHECKS = Path(checks.__file__).parent
CATALOGUE = yaml.safe_load((CHECKS / "messages_zh_CN.yaml").read_text(encoding="utf-8"))
CJK = re.compile(r"[\u4e00-\u9fff]")
FIELD = re.compile(r"\{(\d+)\}")
# the calls whose first argument is a message, and the arguments that become part of one
MESSAGE_CALLS = {"passed", "fail", "CheckFailed", "NotAnswered", "localize", "_labelled"}
MESSAGE_KEYWORDS = {"hint", "nonfinite_hint"}
# a message has an English word and a space outside its fields ("kept", "layer{0}.weight" are code)
WORD = re.compile(r"(?:^|\s)[A-Za-z]{2,}[,:;]?(?=\s|$)")


def _assignments(tree: ast.AST) -> dict[str, list[ast.expr]]:
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
    return found


def _shapes(node: ast.expr, names: dict, depth: int = 0) -> list[list[str | None]]:
    """Every shape a message expression can take: literal pieces and None for a field."""
    if depth > 5:
        return [[None]]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [[node.value]]
    if isinstance(node, ast.JoinedStr):
        return [[v.value if isinstance(v, ast.Constant) else None for v in node.values]]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        lefts, rights = _shapes(node.left, names, depth + 1), _shapes(node.right, names, depth + 1)
        return [a + b for a in lefts for b in rights]
    if isinstance(node, ast.IfExp):
        return _shapes(node.body, names, depth + 1) + _shapes(node.orelse, names, depth + 1)
    if isinstance(node, ast.Name) and node.id in names:  # msg = f"..."; fail(msg)
        return [s for value in names[node.id] for s in _shapes(value, names, depth + 1)]
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):  # fail(hints[key])
        values = [v for v in names.get(node.value.id, []) if isinstance(v, ast.Dict)]
        shapes = [s for d in values for v in d.values for s in _shapes(v, names, depth + 1)]
        return shapes or [[None]]
    return [[None]]


def _template(shape: list[str | None]) -> str:
    text, n = "", 0
    for piece in shape:
        if piece is None:
            text, n = text + f"{{{n}}}", n + 1
        else:
            text += piece
    return text


def message_templates() -> set[str]:
    """The English templates of every message the checks build (code-only strings left out)."""
    templates = set()
    for path in sorted(CHECKS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _assignments(tree)
        nodes = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):  # CheckFailed.label, NotAnswered.label
                for stmt in node.body:
                    targets = getattr(stmt, "targets", [])
                    if [getattr(t, "id", None) for t in targets] == ["label"]:
                        templates.add(stmt.value.value + ": {0}")
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name == "_labelled" and isinstance(node.args[0], ast.Constant):  # "Correct"
                templates.add(node.args[0].value + ": {0}")
            if name in MESSAGE_CALLS and node.args:
                nodes.append(node.args[0])
            if name == "expect_equal" and len(node.args) >= 3:  # what: part of its message
                nodes.append(node.args[2])
            nodes += [kw.value for kw in node.keywords if kw.arg in MESSAGE_KEYWORDS]
        nodes += [  # f"...{hints[key]}": the strings it can insert are messages too
            field.value
            for node in nodes
            if isinstance(node, ast.JoinedStr)
            for field in node.values
            if isinstance(field, ast.FormattedValue)
            and isinstance(field.value, ast.Name | ast.Subscript)
        ]
        for node in nodes:
            for shape in _shapes(node, names):
                template = _template(shape)
                if WORD.search(FIELD.sub(" ", template)) and " " in FIELD.sub("", template):
                    templates.add(template)
    return templates


def test_every_message_has_a_chinese_entry_and_every_entry_is_used():
    templates = message_templates()
    assert len(templates) > 300
    missing = sorted(templates - set(CATALOGUE))
    assert not missing, f"{len(missing)} messages have no Chinese entry, e.g. {missing[:3]}"
    unused = sorted(set(CATALOGUE) - templates)
    assert not unused, f"{len(unused)} catalogue entries are no longer used: {unused[:3]}"


def _translates(english: str, chinese: object) -> bool:
    """Chinese (or, for a name, changed: "the CPU" -> "CPU"), with the same fields."""
    return (
        isinstance(chinese, str)
        and bool(CJK.search(chinese) or chinese != english)
        and sorted(FIELD.findall(chinese)) == sorted(FIELD.findall(english))
    )


def test_each_entry_is_chinese_with_the_same_fields():
    bad = [english for english, chinese in CATALOGUE.items() if not _translates(english, chinese)]
    assert not bad, f"{len(bad)} entries are not Chinese or change the fields: {bad[:3]}"


def test_each_message_finds_its_own_entry(monkeypatch):
    """No longer, more general template takes a message away from its own entry."""
    monkeypatch.setenv("MPCOURSE_LANG", "zh_CN")
    fill = lambda template: FIELD.sub(lambda m: f"<v{m.group(1)}>", template)
    wrong = [
        english
        for english, chinese in CATALOGUE.items()
        if localize(fill(english)) != fill(chinese)
    ]
    assert not wrong, f"{len(wrong)} messages are matched by another entry: {wrong[:3]}"


def _wrong_bias(bits):
    value = decode(bits, FP16)
    return value / 2 if bits.split()[1] not in ("00000", "11111") else value


def _stub(*args):
    raise NotImplementedError("Exercise: write your answer here")


WRONG_ANSWERS = [
    (checks.check_decode, _wrong_bias),  # expect_equal with a hint
    (checks.check_decode, lambda bits: 1 / 0),  # a bug in the answer
    (checks.check_decode, _stub),  # NotAnswered
    (checks.check_fp16_max, None),  # require_answer
    (checks.check_fp16_max, 65535),  # a fail() of the chapter
    (checks.check_fp16_max, 60000.0),  # expect_equal with a `what` and a hint
    (checks.check_e4m3fnuz_max, 448.0),  # a message from a dict of mistakes
    (checks.check_scale_trajectory, expected_trajectory()[:2] + [1.0] * 9),  # fields in fields
]


def _numbers(text: str) -> Counter:
    return Counter(re.findall(r"\d+(?:\.\d+)?", text))


def _report(check, answer) -> str:
    with pytest.raises(checks.CheckFailed) as info:
        check(answer)
    return info.value.report()


@pytest.mark.parametrize("check, answer", WRONG_ANSWERS)
def test_a_wrong_answer_in_chinese_keeps_the_numbers(monkeypatch, check, answer):
    monkeypatch.delenv("MPCOURSE_LANG", raising=False)
    english = _report(check, answer)
    assert not CJK.search(english)
    monkeypatch.setenv("MPCOURSE_LANG", "zh_CN")
    chinese = _report(check, answer)
    assert CJK.search(chinese) and chinese != english
    assert chinese.startswith(("还不对：", "尚未作答："))
    assert _numbers(english) <= _numbers(chinese), (english, chinese)
    untranslated = re.sub(r"\w+Error: .*", "", chinese)  # Python's error and the student's code
    assert not re.search(r"[A-Za-z]{2,} [A-Za-z]{2,} [A-Za-z]{2,}", untranslated), chinese


def test_english_by_default_exactly(monkeypatch, capsys):
    monkeypatch.delenv("MPCOURSE_LANG", raising=False)
    assert _report(checks.check_fp16_max, 65535) == (
        "Not correct yet: 65535 is not FP16's max: the exponent field 11111 is reserved for "
        "inf/NaN, so the largest exponent is 11110 - bias = 15."
    )
    assert _report(checks.check_decode, _stub) == (
        "Not answered yet: decode_fp16 still raises NotImplementedError: write its body above, "
        "run it, then rerun."
    )
    checks.check_fp16_max(65504.0)
    assert capsys.readouterr().out == (
        "Correct: FP16's max is (2 - 2^-10) * 2^15 = 65504, as torch.finfo says.\n"
    )
    monkeypatch.setenv("MPCOURSE_LANG", "en_US")
    assert localize("Correct: an all-zero tensor has nothing to scale: return 1.0.") == (
        "Correct: an all-zero tensor has nothing to scale: return 1.0."
    )


def test_chinese_success_and_student_mode(monkeypatch, capsys):
    monkeypatch.setenv("MPCOURSE_LANG", "zh_CN")
    checks.check_fp16_max(65504.0)
    assert (
        capsys.readouterr().out
        == "正确：FP16 的最大值是 (2 - 2^-10) * 2^15 = 65504，与 torch.finfo 一致。\n"
    )
    with checks.student_mode():
        verdict = checks.check_fp16_max(65535)
    line = capsys.readouterr().out
    assert not verdict and line == f"{verdict.message}\n"
    assert line.startswith("还不对：65535 不是 FP16 的最大值") and "11110 - bias = 15" in line
    # a message no template matches stays English
    assert localize("Not correct yet: something new") == "还不对：something new"
    assert localize("something new entirely") == "something new entirely"


def test_the_glossary_terms_are_used():
    glossary = Path(__file__).parents[1] / "course" / "i18n" / "zh_CN" / "glossary.yaml"
    terms = yaml.safe_load(glossary.read_text(encoding="utf-8"))
    off = [
        (term["zh"], english)
        for term in terms
        for english, chinese in CATALOGUE.items()
        if re.search(term["en"], english, re.IGNORECASE)
        and not any(zh in chinese for zh in [term["zh"], *term.get("also", [])])
    ]
    assert not off, f"{len(off)} entries do not use the glossary's term: {off[:3]}"
