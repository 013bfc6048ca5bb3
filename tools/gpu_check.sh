#!/usr/bin/env bash
# Check the CUDA paths of the course on a GPU: chapters 06 (autocast) and 07 (AMP training)
# with their unit tests, then every other chapter under --nbval-lax.
#
#   bash tools/gpu_check.sh            # from the repository root, on a machine with a CUDA GPU
#
# On a GPU, pick_device() chooses CUDA, so the same notebooks and tests take their CUDA paths:
# FP16 autocast + GradScaler("cuda") exactly as the seed does, the CUDA autocast policy probed on
# the GPU itself (not on fake tensors), BCELoss refused by real CUDA autocast, bit-identical
# resume with cuDNN in deterministic mode. Saved outputs come from the CPU build, so the
# notebooks run under `--nbval-lax` (outputs not compared); every claim is an `assert` in its
# cell, so a claim that does not hold on the GPU fails the run.
# Steps:
#   1. environment report (python -m mpcourse doctor)
#   2. the chapters' unit tests (TESTS below; CUDA-only tests run here)
#   3. notebooks: course/06_autocast.ipynb course/07_amp_training.ipynb under --nbval-lax
#   4. every other chapter under --nbval-lax (their CUDA paths: FP16 autocast, GradScaler("cuda"))
#   5. the CPU path on the same machine (MPCOURSE_DEVICE=cpu) for the same test files
# Prints a summary; exit status 0 when every step passed, 1 when one failed, 2 when no GPU.
# GPU_CHECK_ALLOW_CPU=1 runs the same steps without a GPU (to test this script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export MPCOURSE_NO_PROGRESS=1
# nbval's kernels start in course/: make the package importable there without an install.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Some NVIDIA containers force TF32 on for FP32 matmuls; chapter 08 checks the real defaults.
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE
# Deterministic cuBLAS, so that the bit-identical resume of chapter 07 can hold on a GPU.
export CUBLAS_WORKSPACE_CONFIG=:4096:8

if ! "$PYTHON" -c "import torch, pytest, nbval, hypothesis, ipykernel, sklearn, matplotlib, tqdm"; then
    echo "missing test dependencies for $PYTHON: pip install -e '.[test]' (with a CUDA torch)" >&2
    exit 2
fi

if [[ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]] &&
    ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to torch: this script checks the CUDA paths; run it on a GPU" >&2
    exit 2
fi

# Plain pytest options: the repository's addopts force strict --nbval, which compares outputs
# produced on the CPU; here notebooks run with --nbval-lax instead.
PYTEST=("$PYTHON" -m pytest -o addopts= -p no:cacheprovider -q)
TESTS=(tests/test_autocast.py tests/test_autocast_policy.py tests/test_train.py tests/test_checkpoint.py)
declare -a names=() results=()
step() {  # step NAME COMMAND...
    local name="$1"; shift
    echo; echo "=== $name"
    local start=$SECONDS
    if "$@"; then results+=("passed"); else results+=("FAILED"); fi
    names+=("$name ($((SECONDS - start)) s)")
}

step "environment" "$PYTHON" -m mpcourse doctor
step "unit tests on CUDA" "${PYTEST[@]}" "${TESTS[@]}"
step "notebooks 06-07 on CUDA (--nbval-lax)" "${PYTEST[@]}" --nbval-lax --nbval-current-env \
    --nbval-cell-timeout=600 course/06_autocast.ipynb course/07_amp_training.ipynb
others=()
for nb in course/[0-9][0-9]_*.ipynb; do
    [[ "$nb" == course/06_* || "$nb" == course/07_* ]] || others+=("$nb")
done
step "other chapters on CUDA (--nbval-lax)" "${PYTEST[@]}" --nbval-lax --nbval-current-env \
    --nbval-cell-timeout=600 "${others[@]}"
step "unit tests, CPU path on this machine" env MPCOURSE_DEVICE=cpu \
    "${PYTEST[@]}" "${TESTS[@]}"

machine="$("$PYTHON" -c 'import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU dry run)"
print(gpu, "| torch", torch.__version__, "| CUDA", torch.version.cuda)')"
echo; echo "=== summary: $machine"
status=0
for i in "${!names[@]}"; do
    printf '  [%s] %s\n' "${results[$i]}" "${names[$i]}"
    [[ "${results[$i]}" == "passed" ]] || status=1
done
exit $status
