"""The golden containerd outputs (tests/runtime/golden) as the real containerd 1.6 reads them.

``containerd --config FILE config dump`` must show every handler with its BinaryName and a non-empty
runtime_type: proof that the version line, plugin key and tables are the ones this containerd uses.
Only in-place cases for 1.6.20 run here (drop-in cases import absolute /etc paths of the golden node); the
containerd 2 cases are read by the real containerd 2.4.2 in test_containerd2.py.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from nodeagent.backends.runtimectl import dumped_handler_problem
from nodeagent.runtime.engine import RuntimeSpec
from tests.support import require

from .conftest import left_by_agent

GOLDEN = Path(__file__).parents[2] / "tests/runtime/golden"
CONFIG = "etc/containerd/config.toml"
CASES = sorted(
    p.name
    for p in GOLDEN.iterdir()
    if (p / "expected" / CONFIG).is_file()
    and tomllib.loads((p / "case.toml").read_text()).get("settings", {}).get("containerd_version") == "1.6.20"
)

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("name", CASES)
def test_golden_output_is_what_containerd_reads(name: str) -> None:
    binary = shutil.which("containerd")
    require(binary is not None, "containerd is not installed")
    settings = tomllib.loads((GOLDEN / name / "case.toml").read_text()).get("settings", {})
    spec = RuntimeSpec(path=settings.get("runtime_path", RuntimeSpec.path))
    done = subprocess.run(
        [str(binary), "--config", str(GOLDEN / name / "expected" / CONFIG), "config", "dump"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    for handler, path in spec.handlers():
        assert dumped_handler_problem(done.stdout, handler, path) == "", (handler, done.stdout.decode()[-3000:])
    dump = tomllib.loads(done.stdout.decode())
    runtimes = next(
        dump["plugins"][k]["containerd"]["runtimes"]
        for k in ("io.containerd.grpc.v1.cri", "cri")
        if k in dump["plugins"]
    )
    assert all(runtimes[h]["runtime_type"] for h in spec.handler_names())


DROPIN_CASES = sorted(
    p.name
    for p in GOLDEN.iterdir()
    if (p / "expected/etc/containerd/conf.d").is_dir()
    and tomllib.loads((p / "case.toml").read_text()).get("settings", {}).get("containerd_version") == "1.6.20"
)


@pytest.mark.parametrize("name", DROPIN_CASES)
def test_golden_dropin_output_keeps_what_the_leftover_set(name: str, tmp_path: Path) -> None:
    """The node as the agent leaves it (input + expected), imports moved under tmp_path, read by containerd."""
    binary = shutil.which("containerd")
    require(binary is not None, "containerd is not installed")
    case = GOLDEN / name
    left_by_agent(case, tmp_path)
    main = tmp_path / CONFIG
    main.write_text(main.read_text().replace('"/etc/containerd/conf.d/', f'"{tmp_path}/etc/containerd/conf.d/'))
    done = subprocess.run(
        [str(binary), "--config", str(main), "config", "dump"], capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    for handler, path in RuntimeSpec().handlers():
        assert dumped_handler_problem(done.stdout, handler, path) == "", handler
    cri = tomllib.loads(done.stdout.decode())["plugins"]["io.containerd.grpc.v1.cri"]
    # what nvidia-ctk's leftover set is still containerd's effective config: nothing we do not own dropped
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    assert cri.get("enable_cdi", True) is True  # containerd 1.6 has no enable_cdi key at all (1.7 added it)
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
