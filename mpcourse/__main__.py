"""Command line: ``python -m mpcourse {doctor,student,bench}``.

* ``doctor``: print the environment report (device, autocast dtypes, bf16,
  TF32, CPU features).
* ``student OUT_DIR [--source DIR]``: write the student version of the
  notebooks with nbgrader's ``generate_assignment``
  (:func:`mpcourse.grading.write_student_version`).
* ``bench``: measure matmul throughput and training steps per dtype and
  write ``results/bench-<device>.json``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _doctor(args: argparse.Namespace) -> int:
    from .device import environment_report

    print(environment_report(args.device))
    return 0


def _student(args: argparse.Namespace) -> int:
    from .grading import write_student_version

    source = args.source if args.source is not None else Path(__file__).parents[1] / "course"
    if not source.is_dir():
        raise FileNotFoundError(
            f"no course folder at {source}: pass --source pointing at the folder with NN_*.ipynb"
        )
    chapters = sorted(p for p in source.glob("*.ipynb") if re.match(r"\d\d_", p.name))
    if not chapters:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {source}")
    if args.out_dir.resolve() == source.resolve():
        raise ValueError(
            "OUT_DIR must differ from the course folder: it would overwrite the solutions"
        )
    written = write_student_version(args.out_dir, list(chapters))
    for path in written:
        print(path)
    print(f"{len(written)} student notebook(s) written to {args.out_dir} by nbgrader")
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
    p = sub.add_parser(
        "student", help="write the student version with nbgrader (solutions removed)"
    )
    p.add_argument("out_dir", type=Path, help="folder to write the student notebooks into")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder with the course notebooks NN_*.ipynb (default: the repository's course/)",
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
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:  # bad arguments: one line, no traceback
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
