"""Every device-dependent decision, on GPUs this machine does not have (issue 20, point 4).

torch.cuda's queries are patched to simulate NVIDIA GPUs of compute capability 6.0 to 12.0 and
a CPU-only machine; each decision the course takes (autocast dtype, GradScaler, the doctor's
verdict, FP8 and MX availability, chapter 00's table row) must follow the rule. The last test
scans every chapter for asserts that write a CUDA dtype literally instead of asking the package.
"""

import json
import re
from pathlib import Path

import pytest
import torch

import mpcourse.device as dev

CAPABILITIES = [(6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]
COURSE = Path(__file__).resolve().parent.parent / "course"


def simulate_gpu(monkeypatch, capability):
    """A CUDA build with one NVIDIA GPU of ``capability`` (None: no GPU at all)."""
    monkeypatch.delenv(dev.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(capability is not None))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"sim sm_{capability}")
    # torch/cuda/__init__.py: true from sm_80 on, and on any GPU when emulation counts
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: (
            capability is not None and (including_emulation or capability >= (8, 0))
        ),
    )
    # no real CUDA tensor can be made here: the autocast probe reports what a GPU would
    monkeypatch.setattr(dev, "autocast_dtypes", lambda d: {"float16": True, "bfloat16": True})


@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_decisions_on_simulated_gpus(monkeypatch, capability):
    simulate_gpu(monkeypatch, capability)
    device = dev.pick_device()
    assert device.type == "cuda" and dev.cuda_capability(device) == capability
    bf16 = capability >= (8, 0)
    expected = {
        "amp_dtype": torch.bfloat16 if bf16 else torch.float16,
        "grad_scaler": not bf16,
        "fp8": capability >= (8, 9),
        "mx": capability >= (10, 0),
    }
    assert dev.decisions(device) == expected == dev.rule(capability)
    assert dev.amp_dtype(device) == expected["amp_dtype"]
    assert dev.needs_grad_scaler(dev.amp_dtype(device)) is (not bf16)
    assert dev.bf16_native(device) is bf16
    assert dev.fp8_native(device) is expected["fp8"] and dev.mx_native(device) is expected["mx"]
    report = dev.environment_report(measure=False)
    assert report.cuda_capability == f"sm_{capability[0]}{capability[1]}"
    verdict = report.verdict()
    if bf16:
        assert verdict == "this machine: use bf16 autocast, no GradScaler"
    else:
        assert verdict.startswith("this machine: use fp16 autocast + GradScaler")
    table = dev.decision_table(device).splitlines()
    this = table[-1].split()
    assert this[:3] == ["this", "machine", "(cuda)"]
    dtype = str(expected["amp_dtype"]).replace("torch.", "")
    flags = ["yes" if expected[k] else "no" for k in ("grad_scaler", "fp8", "mx")]
    assert this[3:] == [dtype, *flags]
    assert any(row.startswith(f"sm_{capability[0]}{capability[1]} ") for row in table)
    row = next(r for r in table if r.startswith(f"sm_{capability[0]}{capability[1]} "))
    assert row.split()[-4:] == this[3:]  # the rule's row agrees with the hardware's answer


def test_decisions_on_a_cpu_only_machine(monkeypatch):
    simulate_gpu(monkeypatch, None)
    device = dev.pick_device()
    assert device.type == "cpu" and dev.cuda_capability(device) is None
    assert dev.decisions(device) == dev.rule(None)
    assert dev.decisions(device)["amp_dtype"] == torch.bfloat16
    assert not dev.fp8_native("cpu") and not dev.mx_native("cpu")
    assert not dev.bf16_native("cuda")  # no GPU: nothing is native there
    report = dev.environment_report(measure=False)
    assert report.cuda_capability is None
    assert report.verdict() == "this machine: use bf16 autocast, no GradScaler"
    assert dev.decision_table(device).splitlines()[-1].split() == [
        "this", "machine", "(cpu)", "bfloat16", "no", "no", "no"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "arch,fp8,mx",
    [("gfx90a", False, False), ("gfx942:sramecc+", True, False), ("gfx950", True, True)],
)
def test_rocm_gpus(monkeypatch, arch, fp8, mx):
    """ROCm: BF16 autocast on every GPU; FP8 on MI300/MI350, MX on MI350 (torchao's rule)."""
    simulate_gpu(monkeypatch, (9, 4))
    monkeypatch.setattr(torch.version, "hip", "6.4")
    props = type("Props", (), {"gcnArchName": arch})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=None: props)
    assert dev.amp_dtype("cuda") == torch.bfloat16 and not dev.needs_grad_scaler(torch.bfloat16)
    assert dev.fp8_native("cuda") is fp8 and dev.mx_native("cuda") is mx
    assert dev.cuda_capability("cuda") is None


# An assert that names "cuda" next to a float16/bfloat16 literal writes the GPU's dtype by hand;
# it must ask mpcourse.device (amp_dtype, decisions). Stating the rule for a given GPU
# (default_amp_dtype("cuda", native), rule(capability)) is not device-dependent and passes.
LITERAL = re.compile(
    r"""["']cuda["'][^\n]*torch\.(b?float16|half)|torch\.(b?float16|half)[^\n]*["']cuda["']"""
)


def literal_cuda_dtype_asserts() -> list[str]:
    found = []
    for path in sorted(COURSE.glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                stated_rule = "default_amp_dtype(" in line or "rule(" in line
                if line.lstrip().startswith("assert") and LITERAL.search(line) and not stated_rule:
                    found.append(f"{path.name} cell {i}: {line.strip()}")
    return found


def test_literal_pattern_catches_what_it_should():
    assert LITERAL.search('assert choice == {"cpu": torch.bfloat16, "cuda": torch.float16}')
    assert not LITERAL.search('assert choice["cuda"] == default_amp_dtype("cuda", native)')
    assert not LITERAL.search("assert amp_dtype(torch.device('cpu')) == torch.bfloat16")


def test_no_notebook_asserts_a_literal_cuda_dtype():
    found = literal_cuda_dtype_asserts()
    assert not found, "ask mpcourse.device instead of writing the GPU's dtype:\n" + "\n".join(found)
