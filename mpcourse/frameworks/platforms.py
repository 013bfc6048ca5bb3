"""Where you run it: what to pick on each platform, from the course's decision functions.

The rule is ``mpcourse.device``'s: ``default_amp_dtype(device_type, bf16_native)`` and
``needs_grad_scaler(dtype)`` (BF16 where the hardware computes it, FP16 + GradScaler on
older NVIDIA GPUs, BF16 on CPUs). ``bf16_native`` is read from the compute capability
as ``mpcourse.device.bf16_native`` does (8.0 or newer, or any ROCm GPU). The notes are
facts from the installed libraries' source, cited by file; they are not measured here.

``trainer_fp32_reason`` is the Hugging Face Trainer's decision, from its source, of
whether a training step computes in 16 bits or silently in FP32.

Taught in course/17_frameworks.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..device import default_amp_dtype, needs_grad_scaler


@dataclass(frozen=True)
class Platform:
    name: str
    device_type: str  # "cuda" (ROCm included), "mps", "xpu" or "cpu"
    capability: tuple[int, int] | None
    note: str


PLATFORMS: tuple[Platform, ...] = (
    Platform("Colab/Kaggle T4", "cuda", (7, 5),
             "torch.cuda.is_bf16_supported() is True by emulation (torch/cuda/__init__.py:191-211: "
             "the capability test is skipped unless including_emulation=False), so Trainer "
             "bf16=True (transformers/utils/import_utils.py:664) and Accelerate bf16 "
             "(accelerate/utils/imports.py:165) accept it and run BF16 emulated: pick FP16"),
    Platform("Kaggle P100", "cuda", (6, 0),
             "FP16 without tensor cores; PyTorch's CUDA 12.6 wheels are the last to build "
             "sm_60 (12.8+ start at Turing sm_75: pytorch/pytorch#172352)"),
    Platform("L4 / A100 / H100", "cuda", (8, 0),
             "capability 8.9 / 8.0 / 9.0: BF16 in hardware, no scaler; H100 and L4 add FP8"),
    Platform("AMD ROCm (MI300)", "cuda", None,
             "torch.cuda.is_bf16_supported() is True on any HIP build "
             "(torch/cuda/__init__.py:195); "
             "MI300's FP8 is the FNUZ variant (torch.float8_e4m3fnuz)"),
    Platform("Apple MPS", "mps", None,
             "mpcourse.device runs on cpu/cuda only; Trainer and Accelerate allow BF16 on "
             "macOS 14+ (import_utils.py:672-674, accelerate/utils/imports.py:162-163)"),
    Platform("Intel XPU", "xpu", None,
             "mpcourse.device runs on cpu/cuda only; GradScaler's device defaults to 'cuda' "
             "(torch/amp/grad_scaler.py:125): write GradScaler('xpu') for FP16"),
    Platform("CPU", "cpu", None,
             "BF16 autocast; native on AVX512-BF16/AMX, emulated (slower) elsewhere"),
)  # fmt: skip


def pick(platform: Platform) -> tuple[str, bool] | None:
    """``(autocast dtype name, GradScaler needed)`` by the course's rule, or None where
    ``mpcourse.device`` does not run (MPS, XPU).

    Taught in course/17_frameworks.ipynb.
    """
    if platform.device_type not in ("cuda", "cpu"):
        return None
    native = platform.capability is None or platform.capability >= (8, 0)
    dtype = default_amp_dtype(platform.device_type, native)
    return str(dtype).replace("torch.", ""), needs_grad_scaler(dtype)


def platform_table() -> str:
    """The platforms as a text table: the course's pick, then the source note.

    Taught in course/17_frameworks.ipynb.
    """
    lines = []
    for p in PLATFORMS:
        choice = pick(p)
        what = "-" if choice is None else choice[0] + (" + GradScaler" if choice[1] else "")
        lines.append(f"{p.name:<17} {what:<21} {p.note}")
    return "\n".join([f"{'platform':<17} {'course picks':<21} from the libraries' source"] + lines)


TRAINER_FLAGS = ("fp16", "bf16", "tf32", "fp16_full_eval", "bf16_full_eval")
FP32_REASONS = ("fp16-on-cpu", "eval-only", "tf32-is-fp32", "no-flag")


def trainer_fp32_reason(flags: dict[str, bool], device_type: str) -> str | None:
    """Why the HF Trainer's training step computes in FP32 with these TrainingArguments
    flags, or None when it computes in 16 bits (under autocast). In order:

    1. ``fp16`` on a CPU: Accelerate creates no autocast and no scaler for FP16 there,
       without a warning (accelerate/accelerator.py:536-538) -> ``"fp16-on-cpu"``;
    2. ``fp16`` or ``bf16`` otherwise -> None (16-bit autocast);
    3. ``fp16_full_eval`` / ``bf16_full_eval``: evaluation only -> ``"eval-only"``;
    4. ``tf32``: FP32 storage and autocast off; on Ampere+ matmuls round inputs to TF32
       -> ``"tf32-is-fp32"``;
    5. nothing -> ``"no-flag"``.

    Taught in course/17_frameworks.ipynb.
    """
    unknown = set(flags) - set(TRAINER_FLAGS)
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}: use {', '.join(TRAINER_FLAGS)}")
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    on = {k for k, v in flags.items() if v}
    if "fp16" in on and device_type == "cpu":
        return "fp16-on-cpu"
    if on & {"fp16", "bf16"}:
        return None
    if on & {"fp16_full_eval", "bf16_full_eval"}:
        return "eval-only"
    return "tf32-is-fp32" if "tf32" in on else "no-flag"
