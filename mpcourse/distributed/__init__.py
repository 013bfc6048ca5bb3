"""Mixed precision across processes: DDP and FSDP2, launched with ``torchrun``.

Three modules, cut by side: :mod:`.runs` (what a run is, validated before any
process starts; the memory ledger per rank; the single-process reference),
:mod:`.worker` (what each ``torchrun`` rank does) and :mod:`.launch` (starting
``torchrun`` from Python and reading what the ranks wrote). The ``torchrun``
entry point is ``__main__.py``::

    torchrun --standalone --nproc-per-node 2 -m mpcourse.distributed --train ddp:amp-fp16 --out out

This package re-exports the public names of :mod:`.runs`.

Taught in course/13_distributed.ipynb.
"""

from .runs import *  # noqa: F403
from .runs import __all__ as __all__
