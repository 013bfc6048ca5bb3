"""Real text, offline: two corpora from the installed Python, a byte tokenizer, batches.

Corpora (:func:`corpus`), gathered deterministically from the Python standard
library that runs this code (nothing is downloaded):

* ``"stdlib-docs"``: the docstrings of a fixed, sorted list of pure-Python
  standard-library modules (:data:`DOC_MODULES`): each module's docstring,
  then the docstring of every public class and function defined in it (sorted
  by name), then of every public method of those classes (sorted by name).
  English prose about programming.
* ``"stdlib-source"``: the source code of a second, disjoint fixed list of
  modules (:data:`SOURCE_MODULES`), file after file. Python code: a different
  distribution of bytes, used in chapter 16 as the fine-tuning text.

Stability: the text depends only on the Python version, never on the machine.
The modules were chosen so that both corpora are byte-identical on CPython
3.11.2 and 3.11.7 (checked; ``zipfile``, ``abc``, ``enum`` and others changed
between those patch releases and were left out). Another minor version (3.12,
3.13) changes some docstrings and sources, so the exact losses a notebook
prints are reproduced strictly (nbval) only in the pinned environment; the
asserts hold everywhere.
:func:`fingerprint` gives the SHA-256 of a corpus to compare machines.

Tokenizer (:class:`ByteTokenizer`): the UTF-8 bytes of the text, one token per
byte, vocabulary $V = 256$; ``decode(encode(s)) == s`` for every string.

Batches (:func:`batch`): ``batch_size`` windows of ``block_size + 1``
consecutive tokens at random offsets; the input is ``t[i : i+T]``, the target
is the next token ``t[i+1 : i+T+1]`` (the language-modelling objective
$-\\sum_t \\log p(x_{t+1} \\mid x_{\\le t})$).

Public API (relied on by chapters 15 and 16): ``corpus``, ``CORPORA``,
``fingerprint``, ``ByteTokenizer``, ``split``, ``batch``.

Taught in course/15_transformers.ipynb.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect

import torch

__all__ = [
    "CORPORA",
    "DOC_MODULES",
    "SOURCE_MODULES",
    "ByteTokenizer",
    "batch",
    "corpus",
    "fingerprint",
    "split",
]

DOC_MODULES: tuple[str, ...] = (
    "argparse",
    "bisect",
    "calendar",
    "contextlib",
    "csv",
    "dataclasses",
    "difflib",
    "fractions",
    "functools",
    "heapq",
    "json.decoder",
    "json.encoder",
    "optparse",
    "pprint",
    "queue",
    "random",
    "shlex",
    "statistics",
    "string",
    "textwrap",
)
SOURCE_MODULES: tuple[str, ...] = (
    "cmd",
    "code",
    "copy",
    "filecmp",
    "fnmatch",
    "genericpath",
    "graphlib",
    "hmac",
    "keyword",
    "linecache",
    "numbers",
    "operator",
    "reprlib",
    "sched",
    "secrets",
    "stat",
    "tabnanny",
    "this",
    "tokenize",
    "weakref",
)
CORPORA: tuple[str, ...] = ("stdlib-docs", "stdlib-source")


def _public(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("_"))


def _docs(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    docs = [f"# {module_name}\n\n{inspect.cleandoc(module.__doc__ or '')}"]
    for name in _public(list(vars(module))):
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__ or not obj.__doc__:
            continue
        docs.append(f"{name}: {inspect.cleandoc(obj.__doc__)}")
        if inspect.isclass(obj):
            for meth in _public(list(vars(obj))):
                fn = vars(obj)[meth]
                if inspect.isfunction(fn) and fn.__doc__:
                    docs.append(f"{name}.{meth}: {inspect.cleandoc(fn.__doc__)}")
    return docs


def _source(module_name: str) -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # `this` prints the Zen on import
        module = importlib.import_module(module_name)
    return inspect.getsource(module)


@functools.cache
def corpus(name: str) -> str:
    """The text of the offline corpus ``name`` (one of :data:`CORPORA`).

    Deterministic for a given Python version (see the module docstring).
    Raises ``ValueError`` naming the accepted corpora for any other name.

    Taught in course/15_transformers.ipynb.
    """
    if name == "stdlib-docs":
        return "\n\n".join(d for m in DOC_MODULES for d in _docs(m)) + "\n"
    if name == "stdlib-source":
        return "\n\n".join(_source(m) for m in SOURCE_MODULES)
    raise ValueError(f"unknown corpus {name!r}: use one of {list(CORPORA)}")


def fingerprint(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``text`` (UTF-8): compare corpora across
    machines.

    Taught in course/15_transformers.ipynb.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no unknown token, exact round trip.

    ``encode(s)`` is ``torch.tensor(list(s.encode("utf-8")))`` (int64);
    ``decode(t)`` is ``bytes(t.tolist()).decode("utf-8", errors="replace")``
    (a cut in the middle of a multi-byte character becomes U+FFFD).

    Taught in course/15_transformers.ipynb.
    """

    vocab_size: int = 256

    def encode(self, text: str) -> torch.Tensor:
        """The token ids (int64, one per UTF-8 byte) of ``text``; ``ValueError`` if empty."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if not text:
            raise ValueError("encode got an empty text: give at least one character")
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, tokens: torch.Tensor) -> str:
        """The text of a 1-D tensor (or list) of token ids in ``[0, 256)``."""
        t = torch.as_tensor(tokens)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 1:
            raise ValueError(
                f"decode takes a 1-D integer tensor of ids in [0, 256), got dtype {t.dtype}, "
                f"shape {tuple(t.shape)}"
            )
        _check_ids(t, self.vocab_size)
        return bytes(t.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def _check_ids(tokens: torch.Tensor, vocab_size: int) -> None:
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}) (the vocabulary), got ids from "
            f"{int(tokens.min())} to {int(tokens.max())}"
        )


def split(tokens: torch.Tensor, frac: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)``: the first ``frac`` of the tokens and the rest (no shuffling,
    so held-out text is text the model never saw, not neighbours of training windows).

    Taught in course/15_transformers.ipynb.
    """
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must lie strictly between 0 and 1, got {frac}")
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(
            f"split takes a 1-D tensor of at least 2 tokens, got shape {tuple(tokens.shape)}"
        )
    n = int(tokens.numel() * frac)
    n = min(max(n, 1), tokens.numel() - 1)
    return tokens[:n], tokens[n:]


def batch(
    tokens: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``, each ``(batch_size, block_size)`` int64: random windows and the next
    tokens (``y[:, t] == x[:, t + 1]``). Offsets come from ``generator`` (seeded: same batches).

    Taught in course/15_transformers.ipynb.
    """
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
    if tokens.dim() != 1:
        raise ValueError(f"batch takes a 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
    if tokens.numel() < block_size + 1:
        raise ValueError(
            f"the text has {tokens.numel()} tokens; a window needs block_size + 1 = "
            f"{block_size + 1}: use a longer text or a smaller block_size"
        )
    starts = torch.randint(tokens.numel() - block_size, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(block_size + 1)
    windows = tokens[idx]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
