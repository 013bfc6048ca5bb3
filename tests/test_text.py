"""mpcourse.text: offline corpora, the byte tokenizer, splits and batches."""

import pytest
import torch

from mpcourse import text


@pytest.mark.parametrize("name", text.CORPORA)
def test_corpora_are_real_text_and_deterministic(name):
    s = text.corpus(name)
    assert len(s) > 50_000 and s.count("\n") > 1000  # real multi-line text
    text.corpus.cache_clear()
    assert text.corpus(name) == s  # gathered again from the installed Python: same bytes


def test_the_two_corpora_differ():
    docs, src = text.corpus("stdlib-docs"), text.corpus("stdlib-source")
    assert docs[:1000] != src[:1000]
    assert src.count("def ") > 5 * max(docs.count("def "), 1)  # the source is code
    assert set(text.DOC_MODULES).isdisjoint(text.SOURCE_MODULES)


def test_unknown_corpus_names_the_accepted_ones():
    with pytest.raises(ValueError, match="stdlib-docs"):
        text.corpus("wikipedia")


@pytest.mark.parametrize("s", ["a", "héllo wörld", "日本語 ✓ 🙂", "tab\tnew\nline"])
def test_tokenizer_round_trip(s):
    tok = text.ByteTokenizer()
    ids = tok.encode(s)
    assert ids.dtype == torch.int64 and ids.numel() == len(s.encode("utf-8"))
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size == 256
    assert tok.decode(ids) == s


def test_tokenizer_bad_input():
    tok = text.ByteTokenizer()
    with pytest.raises(ValueError, match="empty"):
        tok.encode("")
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tok.decode(torch.tensor([65, 300]))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.tensor([65.0]))


def test_split_keeps_order_and_rejects_bad_fractions():
    t = torch.arange(10)
    a, b = text.split(t, 0.8)
    assert a.tolist() == list(range(8)) and b.tolist() == [8, 9]
    for frac in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            text.split(t, frac)
    with pytest.raises(ValueError, match="at least 2"):
        text.split(torch.tensor([1]), 0.5)


def test_batch_targets_are_the_next_tokens_and_seeded():
    t = torch.arange(100)
    x, y = text.batch(t, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = text.batch(t, 8, 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_batch_rejects_a_text_shorter_than_a_window():
    with pytest.raises(ValueError, match="block_size"):
        text.batch(torch.arange(8), 8, 2)
    with pytest.raises(ValueError, match=">= 1"):
        text.batch(torch.arange(8), 0, 2)
