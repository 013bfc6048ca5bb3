"""mpcourse: the reference implementation behind the mixed precision course.

Each module backs one chapter of ``course/``; see README.md for the map.
"""

import logging as _logging

__version__ = "0.1.0"

# Known, harmless messages that libraries log to stderr because of the environment,
# not because anything is wrong: students should see the course, not this noise (and
# strict nbval fails on unexpected stderr). Exactly these messages are dropped, at the
# logger that emits them; anything else still shows.
_NOISE = {
    # A CUDA build of torch on a machine without a GPU, when torch.utils.cpp_extension is
    # imported (the benchmark utilities import it): the course then runs on the CPU.
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    # torchao on a CPU-only torch: its CUDA extensions (_C*.so) do not load, which
    # concerns none of the CPU code paths the course uses (chapters 11 and 14).
    "torchao": ("Failed to load", "Skipping import of"),
    # torch's pytree, on torchao registering Enum classes (a deprecation for torchao).
    "torch.utils._pytree": ("is an Enum subclass",),
}


class _DropKnownNoise(_logging.Filter):
    def __init__(self, needles: tuple[str, ...]) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: _logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


for _name, _needles in _NOISE.items():
    _logging.getLogger(_name).addFilter(_DropKnownNoise(_needles))
