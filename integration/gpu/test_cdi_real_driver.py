"""A CDI spec from the real driver root of a GPU machine (ours: /usr/local/nvidia, read-only).

Read-only: the driver is observed and assessed, the spec is generated in memory; nothing on the host
is written. Skipped where no NVIDIA driver is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.cdi import spec as cdispec
from nodeagent.driver import devnodes, planner
from nodeagent.driver.observe import gather
from nodeagent.model.gpu import GpuInfo, Inventory
from nodeagent.settings import Settings

pytestmark = pytest.mark.gpu

HOST = Root("/")


def _inventory_from_proc(version: str) -> Inventory:
    """The GPUs as /proc/driver/nvidia/gpus lists them (UUID, bus id, minor): enough for CDI."""
    gpus = []
    for index, bus_id in enumerate(HOST.listdir(devnodes.PROC_GPUS)):
        text = HOST.read_text(f"{devnodes.PROC_GPUS}/{bus_id}/information") or ""
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
        gpus.append(
            GpuInfo(
                index=index,
                uuid=fields["GPU UUID"],
                name=fields.get("Model", ""),
                pci_bus_id="0000" + bus_id.upper(),
                pci_device_id=0,
                pci_subsystem_id=0,
                minor_number=int(fields["Device Minor"]),
                memory_total_mib=0,
                compute_capability=(0, 0),
                architecture="",
                brand="",
                serial="",
                vbios_version=fields.get("Video BIOS", ""),
                mig_capable=False,
                mig_enabled=False,
                mig_pending=False,
            )
        )
    return Inventory("proc", version, "", 0, tuple(gpus))


@pytest.mark.skipif(not Path("/proc/driver/nvidia/version").exists(), reason="no NVIDIA driver loaded here")
def test_spec_from_the_real_driver_root() -> None:
    settings = Settings()
    obs = gather(
        HOST,
        driver_root=os.environ.get("NODEAGENT_TEST_DRIVER_ROOT", ""),
        dev_root="/",
        validations_dir=settings.driver.validations_dir,
    )
    assessment = planner.assess(obs, settings)
    assert obs.selection.files is not None, obs.selection.reason
    assert assessment.facts is not None, assessment.failures
    facts = assessment.facts
    inventory = _inventory_from_proc(facts.kernel_version)
    assert inventory.gpus, "the driver lists no GPU in /proc/driver/nvidia/gpus"
    spec = cdispec.generate(facts, inventory, cdispec.CdiOptions(), ipc=())
    for path in cdispec.host_paths(spec):
        assert Path(path).exists(), path
    mounts = spec["containerEdits"]["mounts"]
    containers = {m["containerPath"] for m in mounts}
    links = {
        args[i + 1].split("::")[1]
        for hook in spec["containerEdits"]["hooks"]
        for args in [hook["args"]]
        for i, a in enumerate(args)
        if a == "--link"
    }
    names = containers | links
    assert "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1" in names
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in names
    assert "/usr/bin/nvidia-smi" in containers
    devices = len(spec["devices"])
    print(f"driver root {facts.root}: {len(mounts)} mounts, {devices} devices, cdiVersion {spec['cdiVersion']}")
