"""python -m mpcourse doctor prints the environment report."""

import subprocess
import sys

import torch


def test_doctor_prints_the_report():
    out = subprocess.run(
        [sys.executable, "-m", "mpcourse", "doctor", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"torch_version             {torch.__version__}" in out
    assert "autocast_dtypes" in out and "cpu_capability" in out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("this machine: use bf16 autocast, no GradScaler")
    assert "x slower" in verdict or "x faster" in verdict  # measured here, not assumed


def test_unknown_command_is_an_error():
    result = subprocess.run(
        [sys.executable, "-m", "mpcourse", "frobnicate"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("\n```")[0]
    assert block.strip() in (root / ".ci" / "run").read_text()
    assert "pytest" in block


def test_cpu_only_commands_are_the_two_commands_with_the_cpu_build_of_torch_first():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    def block(marker: str) -> str:
        return readme.split(f"<!-- {marker} -->", 1)[1].split("```bash\n", 1)[1].split("\n```")[0]

    cpu_torch = "pip install torch --index-url https://download.pytorch.org/whl/cpu && "
    for name in ("open-command", "test-command"):
        variant = block(f"{name}-cpu")
        assert cpu_torch in variant, f"{name}-cpu does not install the CPU build of torch first"
        assert variant.replace(cpu_torch, "") == block(name), f"{name}-cpu drifted from {name}"


def test_bench_options_reach_the_benchmark():
    result = subprocess.run(
        [sys.executable, "-m", "mpcourse", "bench", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--quick" in result.stdout
