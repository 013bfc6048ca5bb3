"""mpcourse.distributed.dataflow (FSDP2's dtype rules, the figure) and .scripts (torchrun)."""

from __future__ import annotations

import sys

import matplotlib
import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from mpcourse import checks
from mpcourse.distributed.dataflow import STAGES, plot_dataflow, policy_dtypes
from mpcourse.distributed.scripts import run_script, torchrun_command

matplotlib.use("Agg")
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def test_policy_dtypes_follow_the_documented_defaults():
    d = policy_dtypes(MixedPrecisionPolicy(param_dtype=BF16))
    assert d == {"sharded parameter": FP32, "all-gather": BF16, "compute": BF16,
                 "reduce-scatter": BF16, "gradient": FP32, "output": BF16}  # fmt: skip
    d = policy_dtypes(MixedPrecisionPolicy(FP16, reduce_dtype=FP32, output_dtype=FP32))
    assert (d["compute"], d["reduce-scatter"], d["output"]) == (FP16, FP32, FP32)
    assert set(policy_dtypes(MixedPrecisionPolicy()).values()) == {FP32}
    assert tuple(d) == STAGES
    with pytest.raises(TypeError, match="MixedPrecisionPolicy"):
        policy_dtypes("bf16")
    with pytest.raises(TypeError, match="floating-point"):
        policy_dtypes(MixedPrecisionPolicy(), torch.int8)


def test_the_default_reduce_dtype_is_the_compute_dtype_in_torchs_docstring():
    import inspect

    from torch.distributed.fsdp._fully_shard import _fsdp_api

    doc = " ".join(inspect.getdoc(_fsdp_api.MixedPrecisionPolicy).split())
    assert "but ``param_dtype`` is not ``None``, then the reduction uses the compute dtype" in doc
    assert MixedPrecisionPolicy().reduce_dtype is None


def test_plot_dataflow_labels_the_arrows_with_the_policy():
    ax = plot_dataflow(MixedPrecisionPolicy(BF16, reduce_dtype=FP32), hook_dtype=FP16)
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("bf16") == 3 and "fp16" in labels and "FSDP2" in labels


def test_policy_check_accepts_the_rules_and_names_the_default_mistake():
    def good(p):
        return policy_dtypes(p)

    def fp32_by_default(p):
        d = policy_dtypes(p)
        d["reduce-scatter"] = p.reduce_dtype or FP32
        return d

    assert checks.check_policy_dtypes(good)
    with pytest.raises(checks.CheckFailed, match="reduce_dtype=None does not mean FP32"):
        checks.check_policy_dtypes(fp32_by_default)
    with pytest.raises(checks.NotAnswered):
        checks.check_policy_dtypes(None)


def test_run_script_command_and_bad_input(tmp_path):
    cmd = torchrun_command("train.py", 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == ["--standalone", "--nproc-per-node=4", "train.py"]
    with pytest.raises(ValueError, match="nproc"):
        torchrun_command("train.py", 0)
    with pytest.raises(FileNotFoundError, match="no training script"):
        run_script(tmp_path / "missing.py")
