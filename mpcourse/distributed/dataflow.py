"""Which dtype each tensor has on its way through DDP and FSDP2: the rules, and a figure.

FSDP2's ``MixedPrecisionPolicy(param_dtype, reduce_dtype, output_dtype,
cast_forward_inputs)`` (``torch/distributed/fsdp/_fully_shard/_fsdp_api.py``)
decides, for a model whose parameters are stored in dtype $p$ (FP32):

* sharded parameters (the optimizer's master weights) and their gradients: $p$;
* all-gather and compute copies: ``param_dtype``, or $p$ when it is ``None``;
* inputs: cast to ``param_dtype`` when ``cast_forward_inputs`` (default True);
* gradient reduce-scatter: ``reduce_dtype``, or else **the compute dtype**
  (``param_dtype`` when set: the docstring's "If this is None but param_dtype is
  not None, then the reduction uses the compute dtype"), then cast to $p$ into the
  sharded gradient; with gradient sync off, gradients accumulate in that dtype;
* module outputs: ``output_dtype``, or else left in the compute dtype.

DDP with autocast keeps $p$ everywhere outside autocast's ops; its all-reduce
runs in $p$ unless a compression hook casts the bucket (``fp16_compress_hook``:
``buffer.to(float16).div_(world_size)``, cast first, divided after).

Taught in course/13_distributed.ipynb.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["STAGES", "policy_dtypes", "plot_dataflow"]

STAGES = ("sharded parameter", "all-gather", "compute", "reduce-scatter", "gradient", "output")


def policy_dtypes(policy: Any, original: torch.dtype = torch.float32) -> dict[str, torch.dtype]:
    """The dtype of each :data:`STAGES` entry under an FSDP2 ``MixedPrecisionPolicy``.

    ``original`` is the dtype the parameters are stored in (the sharded master
    weights). Follows the defaults documented in ``_fsdp_api.py`` (see the
    module docstring). Taught in course/13_distributed.ipynb.
    """
    fields = ("param_dtype", "reduce_dtype", "output_dtype")
    if not all(hasattr(policy, f) for f in fields):
        raise TypeError(
            f"policy must be a torch.distributed.fsdp.MixedPrecisionPolicy, got {policy!r}"
        )
    if not isinstance(original, torch.dtype) or not original.is_floating_point:
        raise TypeError(f"original must be a floating-point torch.dtype, got {original!r}")
    compute = policy.param_dtype or original
    return {
        "sharded parameter": original,
        "all-gather": compute,
        "compute": compute,
        "reduce-scatter": policy.reduce_dtype or compute,
        "gradient": original,
        "output": policy.output_dtype or compute,
    }


def _short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float", "fp")


def plot_dataflow(policy: Any, ax: Any = None, hook_dtype: torch.dtype | None = None) -> Any:
    """Draw one training step of DDP (top row) and FSDP2 (bottom row), dtype on each arrow.

    DDP: FP32 parameters, autocast compute in the policy's ``param_dtype``,
    gradient all-reduce in FP32 (or ``hook_dtype`` when a compression hook casts
    the bucket), FP32 optimizer step. FSDP2: :func:`policy_dtypes`. Returns the
    matplotlib axes. Taught in course/13_distributed.ipynb.
    """
    import matplotlib.pyplot as plt

    d = policy_dtypes(policy)
    low = d["compute"]
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 3.4))
    rows = {
        "DDP": [
            ("parameters\n(full, each rank)", "fp32"),
            ("autocast\nforward/backward", _short(low)),
            ("all-reduce\n(average)", _short(hook_dtype or torch.float32)),
            ("gradients", "fp32"),
            ("optimizer step\n(master weights)", "fp32"),
        ],
        "FSDP2": [
            ("sharded parameters\n(1/N, DTensor)", _short(d["sharded parameter"])),
            ("all-gather", _short(d["all-gather"])),
            ("forward/backward\n(per module)", _short(d["compute"])),
            ("reduce-scatter\n(average of shard)", _short(d["reduce-scatter"])),
            ("optimizer step\non the shard", _short(d["gradient"])),
        ],
    }
    for y, (name, boxes) in zip((1.0, 0.0), rows.items()):
        ax.text(-1.9, y, name, fontsize=11, fontweight="bold", va="center")
        for i, (label, _) in enumerate(boxes):
            ax.text(i * 2.2, y, label, ha="center", va="center", fontsize=8.5,
                    bbox={"boxstyle": "round", "fc": "#eef3fb", "ec": "#4a6fa5"})  # fmt: skip
            if i + 1 < len(boxes):
                ax.annotate("", xy=(i * 2.2 + 1.45, y), xytext=(i * 2.2 + 0.75, y),
                            arrowprops={"arrowstyle": "->", "lw": 1.5})  # fmt: skip
                ax.text(i * 2.2 + 1.1, y + 0.18, boxes[i + 1][1], ha="center", fontsize=9,
                        color="#b03030", fontweight="bold")  # fmt: skip
    ax.set_xlim(-2.0, 9.7)
    ax.set_ylim(-0.5, 1.5)
    ax.axis("off")
    ax.set_title("one training step: the dtype on each arrow (red)", fontsize=10)
    return ax
