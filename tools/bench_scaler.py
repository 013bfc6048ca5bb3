"""Per-step overhead of mpcourse's DynamicLossScaler against torch.amp.GradScaler.

    python tools/bench_scaler.py                 # 300 parameter tensors, on pick_device()
    python tools/bench_scaler.py --layers 50 --width 256 --repeats 7

The model is a stack of Linear layers (2 parameter tensors each). Gradients are
set once; each timed iteration runs what a scaler adds to a training step,
``scale(loss)`` + ``unscale_(opt)`` + ``step(opt)`` + ``update()``, with an SGD
optimizer (foreach, lr=0, so parameters stay put). Both scalers see the same
work; the report gives the median time per iteration and the ratio
ours / torch, for the fused (default) and the readable per-tensor unscale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcourse import scaling  # noqa: E402
from mpcourse.device import pick_device, synchronize  # noqa: E402


def make_model(layers: int, width: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(device)


def time_scaler(scaler, model: nn.Module, iters: int, device: torch.device) -> float:
    """Seconds per iteration, averaged over ``iters`` iterations after a warm-up."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0, foreach=True)
    loss = torch.ones((), device=device)
    grads = [torch.randn_like(p) for p in model.parameters()]

    def one() -> None:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g  # the same gradient tensors every time (unscaled in place, fine for timing)
        scaler.scale(loss)
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()

    for _ in range(5):  # warm-up
        one()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        one()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=150, help="Linear layers (2 tensors each)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: pick_device())")
    args = parser.parse_args()
    device = pick_device(args.device)
    model = make_model(args.layers, args.width, device)
    n_tensors = len(list(model.parameters()))

    names = ("torch.amp.GradScaler", "DynamicLossScaler (fused)", "DynamicLossScaler (loop)")
    rows: dict[str, list[float]] = {name: [] for name in names}
    original = scaling.unscale_grads_
    for _ in range(args.repeats):
        ref = torch.amp.GradScaler(device.type, growth_interval=10**9)
        rows[names[0]].append(time_scaler(ref, model, args.iters, device))
        for fused, name in ((True, names[1]), (False, names[2])):
            # the scaler looks unscale_grads_ up in its module: swap in the per-tensor loop
            scaling.unscale_grads_ = original if fused else partial(original, fused=False)
            try:
                scaler = scaling.DynamicLossScaler(growth_interval=10**9)
                rows[name].append(time_scaler(scaler, model, args.iters, device))
            finally:
                scaling.unscale_grads_ = original
    base = statistics.median(rows["torch.amp.GradScaler"])
    print(
        f"device={device}, torch {torch.__version__}, {n_tensors} parameter tensors, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{args.iters} iterations x {args.repeats} repeats (median)"
    )
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"{name:<28} {med * 1e6:9.1f} us/step   ratio to GradScaler {med / base:5.2f}x")


if __name__ == "__main__":
    main()
