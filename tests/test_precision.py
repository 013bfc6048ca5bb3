"""Tests for mpcourse.precision: the one table of precision recipes."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mpcourse import precision
from mpcourse.device import amp_dtype


def test_the_table_says_params_compute_and_scaler():
    r = precision.RECIPES
    assert set(r) == {"fp32", "amp-fp16", "amp-bf16", "pure-fp16", "pure-bf16"}
    assert [r[n].scaler for n in r] == [n == "amp-fp16" for n in r]  # only FP16 autocast scales
    assert all(r[n].autocast == n.startswith("amp-") for n in r)
    assert all(r[n].pure == n.startswith("pure-") for n in r)
    bf16 = r["amp-bf16"]
    assert bf16.param_dtype == torch.float32 and bf16.compute_dtype == torch.bfloat16
    assert r["pure-fp16"].param_dtype == r["pure-fp16"].compute_dtype == torch.float16


def test_auto_is_the_devices_amp_recipe_and_bad_names_are_refused():
    want = "amp-bf16" if amp_dtype(torch.device("cpu")) == torch.bfloat16 else "amp-fp16"
    assert precision.recipe("auto", "cpu").name == want
    assert precision.recipe(precision.RECIPES["fp32"]) is precision.RECIPES["fp32"]
    with pytest.raises(ValueError, match=r"unknown precision recipe 'fp16': use one of \["):
        precision.recipe("fp16")


def test_autocast_and_scaler_follow_the_recipe():
    with precision.autocast("amp-bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    for name in ("fp32", "pure-bf16"):
        assert isinstance(precision.autocast(name, "cpu"), contextlib.nullcontext)
    assert precision.make_scaler("amp-fp16", "cpu").is_enabled()
    assert not precision.make_scaler("amp-bf16", "cpu").is_enabled()
