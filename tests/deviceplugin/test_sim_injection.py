"""In simulation, a pod given ``nvidia.com/gpu: 1`` by the default ``cdi-cri`` strategy gets exactly its device
nodes: the CDI names Allocate answers, resolved in the spec the cdi subsystem wrote as containerd resolves
them (the device's edits, then the spec's own), name the allocated GPU's node and the control nodes, each
with a ``hostPath`` into the sandbox that exists (a character device with /dev/null's numbers when root)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.driver.subsystem import DriverSubsystem
from tests.deviceplugin.support import inventory, running, settings

GPU = "nvidia.com/gpu"
CONTROL = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"}


def inject(spec: dict[str, Any], names: list[str]) -> dict[str, str]:
    """containerd's CDI injection of ``names`` (``kind=device``): container path → host path of each node."""
    devices = {f"{spec['kind']}={d['name']}": d for d in spec["devices"]}
    edits = [devices[n]["containerEdits"] for n in names] + [spec["containerEdits"]]
    return {n["path"]: n.get("hostPath", n["path"]) for e in edits for n in e.get("deviceNodes", [])}


async def test_one_gpu_gets_exactly_its_device_nodes(tmp_path: Path) -> None:
    inv = await inventory(2)
    sim = testing.context(Root(tmp_path), settings(), inventory=inv, runtime_devices=True)
    assert sandbox.populate_sandbox(sim.root, inv)
    driver, cdi = DriverSubsystem(sim), CdiSubsystem(sim)
    try:
        await driver.start()
        await cdi.start()
        assert cdi.status().ready, cdi.status().reason
    finally:
        await cdi.stop()
        await driver.stop()
        await sim.node.close()
    spec = yaml.safe_load(sim.root.read_bytes(sim.settings.cdi.spec_path) or b"")
    async with running(tmp_path, inv=inv) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        (resp,) = (await r.kubelet.allocate(GPU, [inv.gpus[1].uuid])).container_responses
    names = [c.name for c in resp.cdi_devices]
    assert names == [f"{GPU}={inv.gpus[1].uuid}"]
    nodes = inject(spec, names)
    assert set(nodes) == {f"/dev/nvidia{inv.gpus[1].minor_number}"} | CONTROL
    runtime_dir = str(tmp_path / sandbox.SIM_DEV_DIR.lstrip("/"))
    for path, host in nodes.items():
        assert host == runtime_dir + path
        st = Path(host).stat()
        if os.geteuid() == 0:
            assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3), host
