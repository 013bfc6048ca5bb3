"""Launch ``torchrun`` from Python (a notebook, a test) and read what the ranks wrote.

:func:`launch` validates the runs first (:func:`mpcourse.distributed.runs.validate`: bad input
fails before any process starts), runs ``torchrun --standalone`` (a free port each time,
so parallel launches do not collide) with a timeout, and always cleans up: ranks run in
their own sessions, so they are found through the pid files they write and killed if
still alive, whatever happened. :func:`load_results` and :func:`load_model` read the
per-rank records and rank 0's final weights.

Taught in course/13_distributed.ipynb.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import digits
from ..device import pick_device
from .runs import DATA_FILE, RunSpec, parse_run, validate

__all__ = ["LaunchError", "LaunchResult", "launch", "still_running", "load_results", "load_model"]


# -- launching torchrun from Python ---------------------------------------------------------


class LaunchError(RuntimeError):
    """``torchrun`` failed or timed out; the message ends with the tail of its output."""


@dataclass
class LaunchResult:
    """What :func:`launch` saw: exit code, output, where results are, the ranks' pids."""

    returncode: int
    output: str
    out_dir: Path
    runs: list[RunSpec]
    pids: list[int]
    launcher_pid: int
    seconds: float

    def results(self, run: str | RunSpec) -> list[dict]:
        return load_results(self.out_dir, run)


def launch(
    runs: Sequence[str | RunSpec],
    out_dir: str | Path,
    *,
    nproc: int = 2,
    steps: int = 40,
    batch_size: int = 64,
    seed: int = 0,
    timeout: float = 60.0,
    check: bool = True,
    device: str | torch.device | None = None,
) -> LaunchResult:
    """Run ``torchrun --standalone --nproc-per-node nproc -m mpcourse.distributed ...``.

    Bad input raises here, before any process starts (:func:`validate`).
    ``--standalone`` lets torchrun pick a free port, so parallel launches do not
    collide. Children get ``OMP_NUM_THREADS=1``, and ``device`` (``"cpu"``, ``"cuda"``; default:
    what :func:`~mpcourse.device.pick_device` picks) as ``$MPCOURSE_DEVICE``: each rank then
    runs on the CPU (gloo) or on ``cuda:<local rank>`` (NCCL). On return, on a timeout or on an
    error, every rank still alive (found through the pid files the ranks write) and
    torchrun's process group are killed: no orphans. With ``check=True`` a non-zero
    exit raises :class:`LaunchError`.

    Taught in course/13_distributed.ipynb.
    """
    specs = validate(runs, nproc, batch_size=batch_size, steps=steps)
    kind = pick_device(device).type
    if kind == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(
            f"nproc={nproc} ranks need {nproc} GPUs, this machine has "
            f"{torch.cuda.device_count()}: lower nproc or launch with device='cpu'"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pid-rank*"):
        old.unlink()
    data, test = digits("train"), digits("test")
    torch.save({"train": list(data.tensors), "test": list(test.tensors)}, out / DATA_FILE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "--monitor-interval=0.1", "-m", "mpcourse.distributed"]
    cmd += [x for s in specs for x in ("--train", s.as_arg())]
    cmd += ["--out", str(out), "--steps", str(steps), "--batch-size", str(batch_size)]
    cmd += ["--seed", str(seed)]
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_NUM_THREADS="1", MPCOURSE_NO_PROGRESS="1", MPCOURSE_DEVICE=kind)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # torchrun and what it leaves in its group: killed together
    )
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
        output, _ = proc.communicate()
    finally:
        if proc.poll() is None:  # e.g. KeyboardInterrupt in the notebook
            _stop(proc)
        pids = _reap_ranks(out)
    seconds = time.perf_counter() - start
    result = LaunchResult(proc.returncode, output, out, specs, pids, proc.pid, seconds)
    if check and (timed_out or proc.returncode != 0):
        why = f"timed out after {timeout:g} s" if timed_out else f"exit code {proc.returncode}"
        raise LaunchError(f"torchrun {why}; last output:\n{output[-3000:]}")
    return result


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _stop(proc: subprocess.Popen) -> None:
    """Stop torchrun and its ranks: SIGTERM to torchrun's group (torchrun forwards it to
    the ranks and waits for them), SIGKILL after 10 s; then SIGKILL any rank it started
    that is still alive (ranks live in their own sessions, out of the group's reach)."""
    kids = _children(proc.pid)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in kids:
        if _alive_rank(pid):
            os.kill(pid, signal.SIGKILL)


def _alive_rank(pid: int) -> bool:
    """Is ``pid`` still one of our rank processes (not a reused pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"mpcourse.distributed" in cmdline


def still_running(pids: Sequence[int]) -> list[int]:
    """The rank processes among ``pids`` that are still alive (none, after :func:`launch`).

    Taught in course/13_distributed.ipynb.
    """
    return [p for p in pids if _alive_rank(p)]


def _reap_ranks(out: Path) -> list[int]:
    """Kill every rank listed in ``out/pid-rank*`` that is still running; return the pids.
    Ranks run in their own sessions (torchrun starts them so), hence the pid files."""
    pids = [int(p.read_text()) for p in sorted(out.glob("pid-rank*"))]
    deadline = time.monotonic() + 5.0
    for pid in pids:
        while _alive_rank(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive_rank(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return pids


def load_results(out_dir: str | Path, run: str | RunSpec) -> list[dict]:
    """The per-rank result dicts of ``run``, ordered by rank.

    Taught in course/13_distributed.ipynb.
    """
    folder = Path(out_dir) / parse_run(run).name
    files = sorted(folder.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise FileNotFoundError(f"no per-rank results in {folder}: did the launch run {run!r}?")
    return [json.loads(f.read_text()) for f in files]


def load_model(out_dir: str | Path, run: str | RunSpec) -> dict[str, torch.Tensor]:
    """The full final state dict rank 0 saved for ``run``.

    Taught in course/13_distributed.ipynb.
    """
    return torch.load(Path(out_dir) / parse_run(run).name / "model.pt", weights_only=True)
