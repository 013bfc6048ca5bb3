#!/usr/bin/env bash
# Measure mixed precision speed and memory on a CUDA GPU and check the course's goals.
#
#   bash tools/gpu_bench.sh            # from the repository root, on a machine with a CUDA GPU
#
# Runs `python -m mpcourse bench --device cuda` (matmul TFLOP/s for FP32 with TF32 off, TF32,
# FP16, BF16 at sizes up to 8192; one training step of the seed's SimpleModel and of the
# matmul-heavy WideMLP in FP32, AMP FP16 and AMP BF16, with CUDA peak memory), which writes
# results/bench-<gpu>.json (machine, torch/CUDA versions, date), then prints whether each goal
# is met. Goals (set for an H200; pass other numbers through the environment):
#   - WideMLP AMP step >= MIN_SPEEDUP (3) x faster than FP32 with TF32 off
#   - WideMLP AMP peak memory <= MAX_MEMORY_RATIO (0.65) x FP32's
#   - BF16 matmul at the largest size >= MIN_PEAK_FRACTION (0.8) of PEAK_BF16_TFLOPS (790)
# Exit status: 0 when every goal is met, 1 when one is missed, 2 when no GPU is there.
# Commit the JSON it writes: course/09_speed_and_memory.ipynb shows it. Never edit it by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to torch: this script measures a GPU; run it on a CUDA machine" >&2
    exit 2
fi
"$PYTHON" -m mpcourse.bench --device cuda --min-time "${MIN_TIME:-0.5}" --out results | tee /tmp/mpcourse-gpu-bench.txt
json="$(sed -n 's/^wrote //p' /tmp/mpcourse-gpu-bench.txt | tail -n 1)"
"$PYTHON" - "$json" <<'PY'
import json
import os
import sys

from mpcourse.bench import evaluate_goals

result = json.loads(open(sys.argv[1]).read())
goals = evaluate_goals(
    result,
    peak_bf16_tflops=float(os.environ.get("PEAK_BF16_TFLOPS", 790)),
    min_speedup=float(os.environ.get("MIN_SPEEDUP", 3)),
    max_memory_ratio=float(os.environ.get("MAX_MEMORY_RATIO", 0.65)),
    min_peak_fraction=float(os.environ.get("MIN_PEAK_FRACTION", 0.8)),
)
print(f"\ngoals on {result['machine']['device_name']} ({result['machine']['date']}):")
for text, ok in goals:
    print(f"  [{'met' if ok else 'MISSED'}] {text}")
sys.exit(0 if all(ok for _, ok in goals) else 1)
PY
