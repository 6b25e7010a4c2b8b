"""container/stage.sh: the sources the image's wheel is built from hold no test-only code, and the agent
they make runs without it.

build.sh builds the nodeagent wheel from what stage.sh copies, so the staged tree bounds what the image's
/opt/nodeagent/nodeagent can hold. The agent is then imported and run from that tree alone, with the
environment's dependencies but without the checkout (no editable install, no site hooks), as the image's
PYTHONPATH=/opt/nodeagent runs it.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
STAGE = REPO / "container/stage.sh"
TEST_ONLY = "nodeagent/testing"

# Runs with -S: no site-packages hooks, so the checkout's editable install cannot supply a module the
# staged tree lacks. argv: the staged tree, then the dependencies' directories.
IMPORT_EVERYTHING = """
import importlib, json, sys
from pathlib import Path
stage = Path(sys.argv[1])
sys.path[:0] = [str(stage)]
sys.path += sys.argv[2:]
names = []
for path in sorted((stage / "nodeagent").rglob("*.py")):
    parts = path.relative_to(stage).with_suffix("").parts
    if parts[-1] == "__main__":
        continue
    names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
for name in names:
    importlib.import_module(name)
sys.argv = ["nodeagent", "plan", "--simulate"]
from nodeagent.cli import main
code = main()
loaded = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] == "nodeagent"}
print(json.dumps({"imported": names, "plan_exit": code, "loaded": loaded}))
"""


def files_under(top: Path) -> set[str]:
    """Files below ``top`` as paths relative to it, without byte-code caches."""
    return {
        p.relative_to(top).as_posix()
        for p in top.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("stage") / "src"
    done = subprocess.run([str(STAGE), str(dest)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dest


def test_no_test_only_code_is_staged(staged: Path) -> None:
    leaked = sorted(f for f in files_under(staged) if f == TEST_ONLY or f.startswith(f"{TEST_ONLY}/"))
    assert not leaked, f"test-only files staged for the image: {leaked}"
    assert not (staged / TEST_ONLY).exists()


def test_everything_else_of_the_package_is_staged(staged: Path) -> None:
    shipped = {f"nodeagent/{f}" for f in files_under(REPO / "nodeagent")}
    expected = {f for f in shipped if not f.startswith(f"{TEST_ONLY}/")} | {"pyproject.toml", "README.md"}
    expected |= {p.name for p in REPO.glob("LICENSE*")}
    got = files_under(staged)
    assert not expected - got, f"missing from the staged sources: {sorted(expected - got)}"
    assert not got - expected, f"staged but not expected: {sorted(got - expected)}"
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "nodeagent").rglob("__init__.py")}
    assert "nodeagent/backends/gpu/sim" in packages  # the simulator ships: it is part of the product
    for package in sorted(packages - {TEST_ONLY} - {p for p in packages if p.startswith(f"{TEST_ONLY}/")}):
        assert f"{package}/__init__.py" in got, package


def test_the_staged_agent_imports_and_plans_without_test_code(staged: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_EVERYTHING, str(staged), *site.getsitepackages()],
        cwd=tmp_path,  # `--simulate` lays out its sandbox under ./.nodeagent/sim
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["plan_exit"] == 0, done.stderr[-4000:]
    assert {"nodeagent.cli", "nodeagent.compose", "nodeagent.backends.gpu.sim.backend"} <= set(report["imported"])
    loaded: dict[str, str | None] = report["loaded"]
    assert not [n for n in loaded if n.startswith("nodeagent.testing")]
    outside = {n: f for n, f in loaded.items() if f is None or not Path(f).is_relative_to(staged)}
    assert not outside, f"modules loaded from outside the staged tree: {outside}"
