"""The import contracts in pyproject.toml hold, and each one really fails when broken.

Each case copies the package to a temporary directory, adds one import that breaks one contract, and runs
``lint-imports`` there: it must fail naming that contract. Without these a contract could be written so
that it never matches anything and still print KEPT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def run_lint_imports(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(repo / "pyproject.toml"), "--no-cache"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy_of_repo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "nodeagent", tmp_path / "nodeagent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_the_tree() -> None:
    result = run_lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a subsystem reaching into another one's internals
        ("nodeagent/cdi/subsystem.py", "from nodeagent.driver import planner", "Subsystems are independent"),
        # a backend depending on the subsystem layer above it
        ("nodeagent/backends/hostfs.py", "from nodeagent import subsystem", "Layers:"),
        # the HTTP server importing the agent (the old app <-> httpserver circle)
        ("nodeagent/httpserver.py", "from nodeagent import app", "Layers:"),
        # core code deciding between real and simulated parts
        ("nodeagent/gpustate/owner.py", "from nodeagent import compose", "Layers:"),
        # a subsystem running processes itself instead of through a backend
        ("nodeagent/metrics/collector.py", "import subprocess", "Only nodeagent.backends touches hardware"),
    ],
)
def test_a_violation_fails_lint(copy_of_repo: Path, module: str, line: str, contract: str) -> None:
    path = copy_of_repo / module
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text
    path.write_text(text.replace(marker, f"{marker}\n{line}  # noqa\n", 1))
    result = run_lint_imports(copy_of_repo)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
