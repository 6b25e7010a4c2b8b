"""The simulated node does for MIG what the real driver (and nvidia-modprobe) does: each GPU and compute instance
has its /proc/driver/nvidia/capabilities entry and its /dev/nvidia-caps node, with the minors the CDI spec
names, whichever way the instances were made (``nodeagent mig apply``, the agent, a persisted state)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from nodeagent.backends.chardevs import parse_placeholder
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim.migcaps import SandboxMigControl
from nodeagent.backends.sim.sandbox import MAJOR_CAPS, populate_sandbox
from nodeagent.cdi.spec import device_node_paths
from nodeagent.cli import main

CAPS = "proc/driver/nvidia/capabilities"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """In-process ``nodeagent`` commands configure structlog onto pytest's captured stderr."""
    yield
    structlog.reset_defaults()


SIM = "h100-80gb-hbm3:2"


def cap_minors(root: Path) -> dict[str, int]:
    """The MIG capability entries under /proc, by path below gpu<N>/mig, with their DeviceFileMinor."""
    out = {}
    for access in sorted((root / CAPS).glob("gpu*/mig/**/access")):
        line = next(x for x in access.read_text().splitlines() if x.startswith("DeviceFileMinor:"))
        out[str(access.relative_to(root / CAPS))] = int(line.split(":")[1])
    return out


def missing(root: Path, paths: list[str]) -> list[str]:
    return [p for p in paths if not (root / p.lstrip("/")).is_file()]


async def test_instances_get_their_capabilities_and_device_nodes(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    populate_sandbox(Root(tmp_path), await sim.inventory())
    control = SandboxMigControl(sim, sim, Root(tmp_path))
    for gpu in (0, 1):
        assert await control.set_mig_mode(gpu, True)
        await control.reset_gpu(gpu)
    made = [await control.create_gpu_instance(0, "3g.40gb", start=s) for s in (0, 4)]
    await control.create_gpu_instance(1, "7g.80gb")
    inventory = await sim.inventory()
    wanted = device_node_paths(inventory)
    assert missing(tmp_path, wanted) == []
    for path in wanted:
        if path.startswith("/dev/nvidia-caps/"):
            node = parse_placeholder((tmp_path / path.lstrip("/")).read_bytes())
            assert node == (MAJOR_CAPS, int(path.rsplit("cap", 1)[1]))
    gi = made[0].gpu_instance_id
    minors = cap_minors(tmp_path)
    assert len(minors) == 6 and f"gpu0/mig/gi{gi}/access" in minors and f"gpu0/mig/gi{gi}/ci0/access" in minors
    assert {f"/dev/nvidia-caps/nvidia-cap{m}" for m in minors.values()} == {p for p in wanted if "nvidia-caps" in p}
    # Destroyed: its /proc entries go (the driver drops them); its device nodes stay, as on a real node.
    await control.destroy_gpu_instance(0, gi)
    after = cap_minors(tmp_path)
    assert f"gpu0/mig/gi{gi}/access" not in after and len(after) == 4
    assert not (tmp_path / CAPS / f"gpu0/mig/gi{gi}").exists()
    assert (tmp_path / f"dev/nvidia-caps/nvidia-cap{minors[f'gpu0/mig/gi{gi}/access']}").is_file()
    # A reset drops every instance of the GPU.
    await control.reset_gpu(1)
    assert not any(k.startswith("gpu1/") for k in cap_minors(tmp_path))
    await sim.close()


def cdi_warnings(capsys: pytest.CaptureFixture[str], root: Path) -> list[str]:
    capsys.readouterr()
    assert main(["plan", "--simulate", SIM, "--root", str(root), "--only", "cdi"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line]


def test_the_walkthrough_leaves_cdi_without_missing_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `nodeagent mig apply` on the sandbox.
    root = tmp_path / "node"
    assert main(["mig", "generate-config", "--simulate", SIM, "--root", str(root), "-f", str(tmp_path / "g.yaml")]) == 0
    argv = [
        "mig",
        "apply",
        "--simulate",
        SIM,
        "--root",
        str(root),
        "-f",
        str(tmp_path / "g.yaml"),
        "-c",
        "all-balanced",
    ]
    assert main(argv) == 0
    assert not [w for w in cdi_warnings(capsys, root) if "not present yet" in w]
    # The agent's own MIG change (its composed MIG control), as after the README's label PATCH.
    agent_root = tmp_path / "agent"
    monkeypatch.setenv("NODEAGENT_MIG__CONFIG", "all-balanced")
    assert main(["apply", "--simulate", SIM, "--root", str(agent_root), "--only", "mig"]) == 0
    monkeypatch.delenv("NODEAGENT_MIG__CONFIG")
    assert len(cap_minors(agent_root)) == 16
    assert not [w for w in cdi_warnings(capsys, agent_root) if "not present yet" in w]
    # A sandbox whose persisted MIG state has instances its /proc and /dev do not show (an older sandbox):
    # the next start lays them out, so no degradation is carried over.
    shutil.rmtree(agent_root / CAPS / "gpu0")
    for node in (agent_root / "dev/nvidia-caps").glob("nvidia-cap*"):
        if node.name not in ("nvidia-cap1", "nvidia-cap2"):
            node.unlink()
    assert not [w for w in cdi_warnings(capsys, agent_root) if "not present yet" in w]
    assert len(cap_minors(agent_root)) == 16
