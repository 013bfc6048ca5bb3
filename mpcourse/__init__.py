"""mpcourse: the reference implementation behind the mixed precision course.

Each module backs one chapter of ``course/``; see README.md for the map.
"""

import logging as _logging

__version__ = "0.1.0"


def _drop_no_cuda_runtime(record: _logging.LogRecord) -> bool:
    # A CUDA build of torch on a machine without a GPU logs "No CUDA runtime is found,
    # using CUDA_HOME=..." to stderr when torch.utils.cpp_extension is imported (the
    # benchmark utilities import it). Nothing is wrong: the course runs on the CPU then.
    # Only that message of that logger is dropped.
    return not record.getMessage().startswith("No CUDA runtime is found")


_logging.getLogger("torch.utils.cpp_extension").addFilter(_drop_no_cuda_runtime)
