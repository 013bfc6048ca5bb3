"""Root pytest configuration shared by the unit tests and the nbval run.

* Progress bars are switched off (kernels started by nbval inherit the
  environment), so outputs hold no timings, exactly as when the notebooks were
  built with tools/build_notebook.py.
* Strict or lax, per notebook: a notebook's outputs are compared exactly only
  when this environment is the one that built it (``mpcourse.repro``: torch
  release and build, Python, CPU kernels); elsewhere its cells still run and
  their asserts still hold, but printed digits are not compared (nbval's lax
  mode), and the run says so in one line at its start. ``MPCOURSE_NBVAL=strict``
  forces the exact comparison everywhere, ``MPCOURSE_NBVAL=lax`` switches it off.
* In parallel by default: one pytest-xdist worker per CPU, a notebook's cells
  kept together on one worker (``--dist loadscope``); ``-n0`` runs serially,
  ``-n N`` picks the number of workers.
* Notebook cells tagged ``requires-gpu`` are skipped, with a reason, when no
  CUDA GPU is present.
"""

import json
import os
from pathlib import Path

import pytest

os.environ["MPCOURSE_NO_PROGRESS"] = "1"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

_MODES = ("auto", "strict", "lax")

# The Chinese edition is the English notebooks with their markdown translated: it is
# checked by comparison (tests/test_i18n.py), not run a second time.
collect_ignore_glob = ["course/zh/*"]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Run in parallel unless ``-n``/``--dist`` was given (or xdist is switched off)."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return
    if config.option.numprocesses is None and config.option.dist == "no":
        config.option.numprocesses = "auto"
        config.option.dist = "loadscope"


def _mode() -> str:
    mode = os.environ.get("MPCOURSE_NBVAL", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise pytest.UsageError(f"MPCOURSE_NBVAL={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def _built_elsewhere(paths) -> dict[Path, dict | None]:
    """The notebooks among ``paths`` not built in this environment, with their keys."""
    from mpcourse.repro import differences, environment_key, recorded_key

    current = environment_key()
    out = {}
    for path in paths:
        key = recorded_key(json.loads(Path(path).read_text(encoding="utf-8")))
        if differences(key, current):
            out[Path(path)] = key
    return out


def _nbval_active(config) -> bool:
    return bool(getattr(config.option, "nbval", False)) and not config.option.nbval_lax


def pytest_report_header(config):
    if not _nbval_active(config) or _mode() == "strict":
        return None
    from mpcourse.repro import describe, environment_key

    notebooks = sorted((config.rootpath / "course").glob("*.ipynb"))
    if _mode() == "lax":
        return "nbval: lax mode for every notebook (MPCOURSE_NBVAL=lax): asserts only"
    elsewhere = _built_elsewhere(notebooks)
    if not elsewhere:
        return f"nbval: strict, outputs compared exactly ({describe(environment_key())})"
    origins = sorted({describe(k) for k in elsewhere.values()})
    return (
        f"nbval: lax mode for {len(elsewhere)} of {len(notebooks)} notebooks: their outputs were "
        f"made with {' / '.join(origins)}, this is {describe(environment_key())}; every assert "
        "still runs. For the exact comparison use that environment (.ci/run pins it) or rebuild "
        "them here with tools/build_notebook.py."
    )


def pytest_collection_modifyitems(config, items):
    cells = [item for item in items if getattr(item, "cell", None) is not None]
    if cells and _nbval_active(config) and _mode() != "strict":
        files = {Path(str(item.parent.fspath)) for item in cells}
        lax = set(files) if _mode() == "lax" else set(_built_elsewhere(files))
        for item in cells:
            if Path(str(item.parent.fspath)) in lax:
                item.options["check"] = False

    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="cell tagged requires-gpu and no CUDA GPU is present")
    for item in cells:
        if "requires-gpu" in item.cell.get("metadata", {}).get("tags", []):
            item.add_marker(skip)
