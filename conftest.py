"""Root pytest configuration shared by the unit tests and the nbval run.

* Progress bars are switched off (kernels started by nbval inherit the
  environment), so outputs hold no timings, exactly as when the notebooks were
  built with tools/build_notebook.py.
* Notebook cells tagged ``requires-gpu`` are skipped, with a reason, when no
  CUDA GPU is present.
"""

import os

import pytest

os.environ["MPCOURSE_NO_PROGRESS"] = "1"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="cell tagged requires-gpu and no CUDA GPU is present")
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is not None and "requires-gpu" in cell.get("metadata", {}).get("tags", []):
            item.add_marker(skip)
