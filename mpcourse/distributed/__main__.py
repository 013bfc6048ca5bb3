"""Entry point of ``torchrun ... -m mpcourse.distributed``: validate, then run on this rank.

Taught in course/13_distributed.ipynb.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import runs
from .runs import PRECISIONS, STRATEGIES, validate
from .worker import run_all


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``torchrun ... -m mpcourse.distributed``: validate, then run on this rank."""

    p = argparse.ArgumentParser(
        prog="torchrun ... -m mpcourse.distributed", description=runs.__doc__
    )
    p.add_argument("--train", action="append", help="STRATEGY:PRECISION[:key=value,...]")
    p.add_argument("--strategy", choices=STRATEGIES, help="a single run (with --precision)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--out", required=True, help="folder for the per-rank results")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    wanted = list(args.train or []) + (
        [f"{args.strategy}:{args.precision}"] if args.strategy else []
    )
    if "RANK" not in os.environ:
        p.error("start this module with torchrun, e.g. torchrun --standalone --nproc-per-node 2 "
                "-m mpcourse.distributed --train ddp:fp32 --out runs/a")  # fmt: skip
    world = int(os.environ["WORLD_SIZE"])
    specs = validate(wanted, world, batch_size=args.batch_size, steps=args.steps)  # before init
    run_all(specs, Path(args.out), args.steps, args.batch_size, args.seed)


if __name__ == "__main__":
    main()
    # Results are written and closed: skip the interpreter's slow teardown of torch (about a
    # second per rank on a busy 2-core machine), which torchrun would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
