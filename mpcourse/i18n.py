"""The course in other languages: translated markdown that cannot silently go stale.

The English notebooks ``course/NN_topic.ipynb`` are the source. The translation of
each markdown cell lives in a catalogue beside them,
``course/i18n/<lang>/NN_topic.yaml``: one entry per markdown cell, keyed by the
cell's id, holding the English text it was made from (``en``), that text's hash
(``sha``) and the translation (``text``). :func:`translate` writes the
translated notebook (``course/zh/NN_topic.ipynb`` for ``zh_CN``): the English
notebook with its markdown replaced; code cells, outputs, tags and nbgrader
metadata identical, so nbval on the English notebooks proves the translated ones.

A translation is *stale* when the English cell changed since it was made (its
hash no longer matches): :func:`status` names such cells, and the tests fail
until the cell is translated again. The workflow::

    python -m mpcourse.i18n sync        # add new cells, re-key moved ones, list stale ones
    #   edit course/i18n/zh_CN/NN_topic.yaml: fill `text`; for a stale entry the
    #   changed English is under `en_new`
    python -m mpcourse.i18n accept NN cell-012   # the translation now matches en_new
    python -m mpcourse.i18n build       # writes course/zh/*.ipynb

Used by README.zh-CN.md (how readers open the Chinese edition) and tests/test_i18n.py.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
LANGS = {"zh_CN": "zh"}  # catalogue language -> folder of the translated notebooks

__all__ = ["LANGS", "Status", "sha", "chapters", "catalogue_path", "load", "save", "status"]
__all__ += ["sync", "accept", "translate", "build"]


def sha(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(
            f"unknown language {lang!r}: the course has catalogues for {sorted(LANGS)}"
        )
    return lang


def chapters() -> list[Path]:
    """The English chapter notebooks, in order."""
    return sorted(COURSE.glob("[0-9][0-9]_*.ipynb"))


def catalogue_path(notebook: Path, lang: str = "zh_CN") -> Path:
    """``course/i18n/<lang>/<notebook stem>.yaml``."""
    return COURSE / "i18n" / _check_lang(lang) / (Path(notebook).stem + ".yaml")


def _markdown(nb: dict) -> list[tuple[str, str]]:
    return [(c["id"], _source(c)) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _source(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def load(path: Path) -> dict[str, dict]:
    """A catalogue: ``{cell id: {"sha", "en", "text"[, "en_new"]}}`` ({} if absent)."""
    path = Path(path)
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a catalogue maps cell ids to entries, got {type(data).__name__}")
    return data


def save(path: Path, entries: dict[str, dict]) -> None:
    """Write a catalogue (entries in cell order, multi-line texts as YAML blocks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        f"# Translations of course/{path.stem}.ipynb's markdown cells ({path.parent.name}).\n"
        "# Keyed by cell id; `sha` is the hash of `en`, the English the translation was made\n"
        "# from. Edit `text`; see mpcourse/i18n.py for the workflow (sync, accept, build).\n"
    )
    body = yaml.dump(entries, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1000)
    path.write_text(head + body, encoding="utf-8")


@dataclass
class Status:
    """Where a notebook's catalogue stands against the English notebook."""

    notebook: str
    missing: list[str] = field(default_factory=list)  # markdown cells with no translation
    stale: list[str] = field(default_factory=list)  # the English changed since
    orphans: list[str] = field(default_factory=list)  # entries for cells that are gone

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.orphans)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.notebook}: every markdown cell translated and current"
        parts = [
            f"{what}: {', '.join(ids)}"
            for what, ids in (
                ("missing", self.missing),
                ("stale (English changed)", self.stale),
                ("orphaned", self.orphans),
            )
            if ids
        ]
        return f"{self.notebook}: " + "; ".join(parts)


def status(notebook: Path, lang: str = "zh_CN") -> Status:
    """Which markdown cells of ``notebook`` lack a current translation in ``lang``."""
    cat = load(catalogue_path(notebook, lang))
    cells = dict(_markdown(_read(notebook)))
    out = Status(Path(notebook).name)
    for cid, text in cells.items():
        entry = cat.get(cid)
        if not entry or not str(entry.get("text", "")).strip():
            out.missing.append(cid)
        elif entry.get("sha") != sha(text) or "en_new" in entry:
            out.stale.append(cid)
    out.orphans = [cid for cid in cat if cid not in cells]
    return out


def sync(notebook: Path, lang: str = "zh_CN") -> Status:
    """Bring a catalogue in line with its notebook; return what is left to translate.

    A cell whose English matches an entry's hash keeps that translation (re-keyed
    if the cell moved: ids are positions); a changed cell keeps the translation of
    the most similar old English (``difflib`` ratio at least ``0.6``), with the new
    English under ``en_new``; any other cell gets an entry with an empty ``text``.
    """
    path = catalogue_path(notebook, lang)
    old = load(path)
    cells = _markdown(_read(notebook))
    by_sha = {e.get("sha"): cid for cid, e in old.items() if "en_new" not in e}
    new: dict[str, dict] = {}
    for cid, text in cells:
        if sha(text) in by_sha:
            new[cid] = old[by_sha.pop(sha(text))]
    pool = {c: e for c, e in old.items() if c in by_sha.values() or "en_new" in e}
    pool = {c: e for c, e in pool.items() if str(e.get("text", "")).strip()}
    for cid, text in cells:
        if cid in new:
            continue
        ratio = {c: difflib.SequenceMatcher(None, e["en"], text).ratio() for c, e in pool.items()}
        best = max(ratio, key=ratio.get, default=None)
        if best is not None and ratio[best] >= 0.6:
            new[cid] = {**pool.pop(best), "en_new": text}
        else:
            new[cid] = {"sha": sha(text), "en": text, "text": ""}
    save(path, {cid: new[cid] for cid, _ in cells})
    return status(notebook, lang)


def accept(notebook: Path, cell_id: str, lang: str = "zh_CN") -> None:
    """Mark a stale entry re-translated: its ``en_new`` becomes ``en``, re-hashed."""
    path = catalogue_path(notebook, lang)
    cat = load(path)
    if cell_id not in cat or "en_new" not in cat[cell_id]:
        raise ValueError(f"{path.name}: {cell_id!r} has no changed English (en_new) to accept")
    entry = cat[cell_id]
    entry["en"] = entry.pop("en_new")
    entry["sha"] = sha(entry["en"])
    save(path, cat)


def translate(notebook: Path, lang: str = "zh_CN") -> dict:
    """The translated notebook (a dict): markdown replaced, everything else identical.

    Raises ``ValueError`` naming the cells whose translation is missing or stale.
    """
    st = status(notebook, lang)
    if st.missing or st.stale:
        raise ValueError(f"cannot translate: {st}")
    cat = load(catalogue_path(notebook, lang))
    nb = copy.deepcopy(_read(notebook))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = cat[cell["id"]]["text"].splitlines(keepends=True)
    nb["metadata"].setdefault("mpcourse", {})["language"] = lang
    return nb


def target_path(notebook: Path, lang: str = "zh_CN") -> Path:
    """Where the translated notebook lives: ``course/<folder>/<name>``."""
    return COURSE / LANGS[_check_lang(lang)] / Path(notebook).name


def dumps(nb: dict) -> str:
    """A notebook as the course writes it (nbformat's layout: indent 1, sorted keys)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def build(lang: str = "zh_CN") -> list[Path]:
    """Write every translated chapter; return the paths written."""
    written = []
    for notebook in chapters():
        target = target_path(notebook, lang)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dumps(translate(notebook, lang)), encoding="utf-8")
        written.append(target)
    return written


def _find(chapter: str) -> Path:
    found = [p for p in chapters() if p.name.startswith(chapter) or p.stem == chapter]
    if len(found) != 1:
        raise SystemExit(f"no single chapter matches {chapter!r}: give its number, e.g. 07")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpcourse.i18n", description=__doc__.split("\n")[0])
    p.add_argument("--lang", default="zh_CN", choices=sorted(LANGS))
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="add new cells, re-key moved ones, list what to translate")
    s.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    a = sub.add_parser("accept", help="a stale entry is translated again: re-hash it")
    a.add_argument("chapter")
    a.add_argument("cell_ids", nargs="+")
    sub.add_parser("status", help="what is missing or stale, per chapter")
    sub.add_parser("build", help="write the translated notebooks")
    args = p.parse_args(argv)
    if args.command == "sync":
        todo = [_find(c) for c in args.chapters] if args.chapters else chapters()
        for nb in todo:
            print(sync(nb, args.lang))
    elif args.command == "accept":
        for cid in args.cell_ids:
            accept(_find(args.chapter), cid, args.lang)
        print(status(_find(args.chapter), args.lang))
    elif args.command == "status":
        states = [status(nb, args.lang) for nb in chapters()]
        for st in states:
            print(st)
        return 0 if all(st.ok for st in states) else 1
    else:
        for path in build(args.lang):
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
