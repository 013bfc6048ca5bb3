"""Command line: ``python -m mpcourse {doctor,student,bench}``.

* ``doctor``: print the environment report (device, autocast dtypes, bf16,
  TF32, CPU features).
* ``student OUT_DIR``: write student copies of the notebooks (solutions
  removed).
* ``bench``: measure matmul throughput and training steps per dtype and
  write ``results/bench-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _doctor(args: argparse.Namespace) -> int:
    from .device import environment_report

    print(environment_report(args.device))
    return 0


def _student(args: argparse.Namespace) -> int:
    from .student import write_student_version

    written = write_student_version(args.source, args.out_dir)
    for path in written:
        print(path)
    print(f"{len(written)} student notebook(s) written to {args.out_dir}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpcourse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="print what this machine can do for mixed precision")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=_doctor)
    p = sub.add_parser("student", help="write student notebooks with the solutions removed")
    p.add_argument("out_dir", type=Path, help="folder to write the student notebooks into")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder with the course notebooks (default: ./course)",
    )
    p.set_defaults(func=_student)
    p = sub.add_parser(
        "bench", help="measure speed and memory per dtype (see mpcourse.bench)", add_help=False
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every option after "bench" belongs to the benchmark
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
