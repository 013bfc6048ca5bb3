"""Run a standalone training script under ``torchrun`` from Python and read what its ranks said.

``torchrun`` is ``python -m torch.distributed.run``: :func:`run_script` calls it as
``torchrun --standalone --nproc-per-node N script.py`` in a subprocess with a
timeout and ``OMP_NUM_THREADS=1`` (one thread per rank), and returns the lines
the ranks printed that start with ``"rank"``, sorted (ranks print in any order).
The course's own instrumented launcher is :mod:`mpcourse.distributed.launch`.

Taught in course/13_distributed.ipynb.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["torchrun_command", "run_script"]


def torchrun_command(script: str | Path, nproc: int = 2) -> list[str]:
    """The command line: ``python -m torch.distributed.run --standalone --nproc-per-node N script``.

    Taught in course/13_distributed.ipynb.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}")
    module = [sys.executable, "-m", "torch.distributed.run"]
    return [*module, "--standalone", f"--nproc-per-node={nproc}", str(script)]


def run_script(script: str | Path, nproc: int = 2, timeout: float = 120.0) -> list[str]:
    """Run ``script`` on ``nproc`` ranks with torchrun; return its ``rank ...`` lines, sorted.

    Raises RuntimeError with the end of torchrun's output when a rank fails, and
    FileNotFoundError when ``script`` does not exist.

    Taught in course/13_distributed.ipynb.
    """
    if not Path(script).is_file():
        raise FileNotFoundError(f"no training script at {script}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        torchrun_command(script, nproc), capture_output=True, text=True, timeout=timeout, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"torchrun exited with {out.returncode}:\n{out.stderr[-3000:]}")
    return sorted(line for line in out.stdout.splitlines() if line.startswith("rank"))
