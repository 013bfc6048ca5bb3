"""Strict where the outputs were made, lax elsewhere: mpcourse.repro and the root conftest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mpcourse.repro import describe, differences, environment_key, record_key, recorded_key

ROOT = Path(__file__).resolve().parents[1]


def test_key_names_what_decides_the_digits():
    key = environment_key()
    assert set(key) == {
        "torch",
        "python",
        "machine",
        "cpu_vendor",
        "cpu_capability",
        "cpu_features",
        "cuda",
    }
    import torch

    assert key["torch"] == torch.__version__
    assert differences(key, environment_key()) == []
    assert differences(None, key) == ["unrecorded"]
    other = dict(key, torch="0.0.1+cu999")
    assert differences(other, key) == ["torch"]
    assert "torch 0.0.1+cu999" in describe(other)
    assert describe(None) == "an unrecorded environment"


def test_record_and_read_back():
    nb = nbformat.v4.new_notebook()
    assert recorded_key(nb) is None
    record_key(nb)
    assert recorded_key(nb) == environment_key()


def test_committed_notebooks_record_their_environment():
    for path in sorted((ROOT / "course").glob("[0-9][0-9]_*.ipynb")):
        key = recorded_key(nbformat.read(path, as_version=4))
        assert key is not None, f"{path.name}: built without tools/build_notebook.py"
        assert set(key) == set(environment_key()), f"{path.name}: stale key {sorted(key)}"


def _notebook(path: Path, key: dict | None) -> None:
    """One cell printing 2 whose committed output says 1: only a strict run sees it."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1 + 1)\nassert 1 + 1 == 2")
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    if key is not None:
        nb.metadata["mpcourse"] = {"built_with": key}
    nbformat.write(nb, path)


def _run(tmp_path: Path, mode: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MPCOURSE_NBVAL", None)
    if mode:
        env["MPCOURSE_NBVAL"] = mode
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "course"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --nbval --nbval-current-env\n")
    (tmp_path / "course").mkdir()
    _notebook(tmp_path / "course" / "here.ipynb", environment_key())
    _notebook(tmp_path / "course" / "elsewhere.ipynb", dict(environment_key(), torch="0.0.1"))
    return tmp_path


def test_strict_only_where_built(project: Path):
    auto = _run(project, None)
    assert "1 failed, 1 passed" in auto.stdout, auto.stdout[-2000:]
    assert "FAILED course/here.ipynb::Cell 0" in auto.stdout
    assert "FAILED course/elsewhere.ipynb" not in auto.stdout
    notice = [line for line in auto.stdout.splitlines() if line.startswith("nbval: lax mode")]
    assert len(notice) == 1 and "1 of 2 notebooks" in notice[0] and "torch 0.0.1" in notice[0]

    strict = _run(project, "strict")
    assert "2 failed" in strict.stdout, strict.stdout[-2000:]
    bad = _run(project, "sloppy")
    assert bad.returncode != 0 and "expected one of auto, strict, lax" in bad.stderr + bad.stdout


def test_ci_runs_the_readme_command_pinned_and_unpinned():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("\n```")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.count(block.strip()) == 2, "the pinned and the newcomer run"
    pinned = ci.split(block.strip())[0]
    newcomer = ci.split("git clone", 1)[1].split(block.strip())[0]
    assert "torch==2.13.0" in pinned and "torch==" not in newcomer, "the newcomer pins nothing"


def test_no_cuda_runtime_notice_is_dropped(caplog):
    """A CUDA build of torch without a GPU logs this on import of cpp_extension (issue 17)."""
    import logging

    import mpcourse  # noqa: F401 - installs the filter

    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("a warning that matters")
    assert [r.getMessage() for r in caplog.records] == ["a warning that matters"]
