#!/usr/bin/env bash
# Check the CUDA paths of the whole course on a GPU, in one call, and write a JSON summary.
#
#   bash tools/gpu_check.sh            # from the repository root, on a machine with a CUDA GPU
#
# On a GPU, pick_device() chooses CUDA, so every chapter takes its CUDA path: the autocast dtype
# and GradScaler that mpcourse.device decides for this GPU, the CUDA autocast policy probed on
# the GPU itself, real FP8 kernels where the GPU has them, NCCL launches. Saved outputs come from
# the CPU build, so notebooks run in nbval's lax mode (outputs not compared); every claim is an
# `assert` in its cell, so a claim that does not hold on this GPU fails the run. Cells tagged
# `requires-gpu` (skipped on a CPU) run here, and the summary says whether each one ran.
# Steps (each with its time in the summary):
#   1. environment: `python -m mpcourse doctor` (device, dtypes, verdict)
#   2. unit tests with CUDA paths (TESTS below), and the simulated-GPU decision tests
#   3. every chapter course/NN_*.ipynb (00-17 and any added later) under --nbval-lax, in
#      parallel (pytest-xdist, a notebook's cells on one worker), within GPU_CHECK_BUDGET seconds
#   4. the same unit tests on the CPU path of this machine (MPCOURSE_DEVICE=cpu)
# Writes results/gpu-check-<gpu>.json (a CPU dry run: the temp folder; GPU_CHECK_OUT overrides): machine, per-step status and seconds, per-chapter
# passed/failed/skipped cells and seconds, the requires-gpu cells (tagged, ran, failed), and the
# failures' test ids. Exit status: 0 when every step passed and every requires-gpu cell ran,
# 1 otherwise, 2 when no GPU is visible.
# Environment: GPU_CHECK_BUDGET (seconds for step 3, default 420: the whole call stays under
# 8 minutes), GPU_CHECK_WORKERS (default: number of CPUs, at most 8), GPU_CHECK_NOTEBOOKS (a
# space-separated subset), GPU_CHECK_ALLOW_CPU=1 (run the same steps without a GPU, to test
# this script; requires-gpu cells are then skipped and reported as not run).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
START=$SECONDS
export MPCOURSE_NO_PROGRESS=1 MPCOURSE_NBVAL=lax
# nbval's kernels start in course/: make the package importable there without an install.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Some NVIDIA containers force TF32 on for FP32 matmuls; chapter 08 checks the real defaults.
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE
# Deterministic cuBLAS, so that the bit-identical resume of chapter 07 can hold on a GPU.
export CUBLAS_WORKSPACE_CONFIG=:4096:8

if ! "$PYTHON" -c "import torch, pytest, nbval, xdist, hypothesis, ipykernel, matplotlib"; then
    echo "missing test dependencies for $PYTHON: pip install -e '.[test]' (with a CUDA torch)" >&2
    exit 2
fi
if [[ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]] &&
    ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to torch: this script checks the CUDA paths; run it on a GPU" >&2
    exit 2
fi

read -r -a NOTEBOOKS <<< "${GPU_CHECK_NOTEBOOKS:-$(ls course/[0-9][0-9]_*.ipynb | tr '\n' ' ')}"
WORKERS="${GPU_CHECK_WORKERS:-$("$PYTHON" -c 'import os; print(min(8, os.cpu_count() or 1))')}"
BUDGET="${GPU_CHECK_BUDGET:-420}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# Plain pytest options: the repository's addopts force strict --nbval for every test path.
PYTEST=("$PYTHON" -m pytest -o addopts= -p no:cacheprovider -q)
TESTS=(tests/test_autocast.py tests/test_autocast_policy.py tests/test_train.py
    tests/test_checkpoint.py tests/test_device.py tests/test_gpu_decisions.py)
: > "$OUT/steps.tsv"
step() {  # step NAME COMMAND...: run it, record status and seconds
    local name="$1"; shift
    echo; echo "=== $name"
    local start=$SECONDS status=passed
    "$@" || status=FAILED
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
}

step "environment" "$PYTHON" -m mpcourse doctor
step "unit tests on CUDA" "${PYTEST[@]}" -n "$WORKERS" --junitxml="$OUT/unit.xml" "${TESTS[@]}"
step "chapters on CUDA (--nbval-lax)" timeout --signal=INT "$BUDGET" "${PYTEST[@]}" \
    --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
    --nbval-cell-timeout=300 -n "$WORKERS" --dist loadscope \
    --junitxml="$OUT/chapters.xml" "${NOTEBOOKS[@]}"
step "unit tests, CPU path on this machine" env MPCOURSE_DEVICE=cpu \
    "${PYTEST[@]}" -n "$WORKERS" "${TESTS[@]}"

"$PYTHON" - "$OUT" "$((SECONDS - START))" "${NOTEBOOKS[@]}" <<'PY'
import json, os, re, sys, tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

out, elapsed, notebooks = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
steps = [dict(zip(("name", "status", "seconds"), line.split("\t")))
         for line in (out / "steps.tsv").read_text().splitlines()]
for s in steps:
    s["seconds"] = int(s["seconds"])
chapters, failures, ran = {}, [], {}
xml = out / "chapters.xml"
cases = ET.parse(xml).getroot().iter("testcase") if xml.exists() else []
for case in cases:
    parts = case.get("classname", "").split(".")  # course.00_setup.ipynb -> 00_setup.ipynb
    file = ".".join(parts[-2:]) if parts[-1] == "ipynb" else case.get("classname", "")
    name = case.get("name", "")
    chapter = chapters.setdefault(Path(file).stem, dict(passed=0, failed=0, skipped=0, seconds=0.0))
    chapter["seconds"] = round(chapter["seconds"] + float(case.get("time", 0)), 1)
    status = ("failed" if case.find("failure") is not None or case.find("error") is not None
              else "skipped" if case.find("skipped") is not None else "passed")
    chapter[status] += 1
    if status == "failed":
        failures.append(f"{file}::{name}")
    m = re.search(r"(\d+)", name)
    if m:
        ran[(Path(file).stem, int(m.group(1)))] = status
tagged = []
for path in notebooks:
    cells = json.loads(Path(path).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    for i, cell in enumerate(code):
        if "requires-gpu" in cell.get("metadata", {}).get("tags", []):
            # nbval names a notebook's items "Cell N", N counting its code cells only
            tagged.append({"chapter": Path(path).stem, "cell": i,
                           "status": ran.get((Path(path).stem, i), "not run")})
summary = {
    "machine": {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
                "hip": torch.version.hip},
    "elapsed_seconds": elapsed,
    "steps": steps,
    "chapters": dict(sorted(chapters.items())),
    "requires_gpu_cells": {
        "tagged": len(tagged),
        "ran": sum(t["status"] in ("passed", "failed") for t in tagged),
        "failed": sum(t["status"] == "failed" for t in tagged),
        "cells": tagged,
    },
    "failures": failures,
}
summary["ok"] = (all(s["status"] == "passed" for s in steps) and not failures
                 and all(t["status"] == "passed" for t in tagged))
slug = re.sub(r"[^a-z0-9]+", "-", (gpu or "cpu-dry-run").lower()).strip("-")
folder = Path(os.environ.get("GPU_CHECK_OUT") or ("results" if gpu else tempfile.gettempdir()))
folder.mkdir(parents=True, exist_ok=True)
target = folder / f"gpu-check-{slug}.json"
target.write_text(json.dumps(summary, indent=2) + "\n")
print(f"\n=== summary: {gpu or 'no GPU (CPU dry run)'} | torch {torch.__version__} "
      f"| {elapsed} s in all")
for s in steps:
    print(f"  [{s['status']}] {s['name']} ({s['seconds']} s)")
for name, c in summary["chapters"].items():
    print(f"  {name:<28} {c['passed']:>3} passed {c['failed']:>2} failed "
          f"{c['skipped']:>2} skipped {c['seconds']:>7.1f} s")
r = summary["requires_gpu_cells"]
print(f"  requires-gpu cells: {r['tagged']} tagged, {r['ran']} ran, {r['failed']} failed")
print(f"wrote {target}")
sys.exit(0 if summary["ok"] else 1)
PY
