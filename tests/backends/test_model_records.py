"""One record of each simulated GPU model: the sandbox's and the scripted GPUs' H100 are the catalogue's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodeagent.backends.sim.sandbox import sandbox_inventory
from nodeagent.model import catalog
from nodeagent.model.gpu import GpuInfo
from nodeagent.testing.scripted import ScriptedGpus, gpu_info


def _captured() -> Any:
    return json.loads(catalog.builtin_text("h100-80gb-hbm3"))


def _identity(gpu: GpuInfo) -> tuple[object, ...]:
    return (
        gpu.name,
        gpu.brand,
        gpu.architecture,
        gpu.pci_device_id,
        gpu.pci_subsystem_id,
        gpu.memory_total_mib,
        gpu.compute_capability,
        gpu.vbios_version,
    )


def _expected() -> tuple[object, ...]:
    g = _captured()["gpu"]
    return (
        g["name"],
        g["brand"],
        g["architecture"],
        int(g["pci_device_id"], 16),
        int(g["pci_subsystem_id"], 16),
        g["memory_total_mib"],
        tuple(g["compute_capability"]),
        g["vbios_version"],
    )


def _mig_memory() -> dict[str, int]:
    return {p["name"]: p["memory_mib"] for p in _captured()["mig"]["profiles"]}


@pytest.mark.parametrize(
    "gpu",
    [
        pytest.param(sandbox_inventory(2, mig_on=(1,)).gpus[1], id="sandbox"),
        pytest.param(gpu_info(1, migs=2), id="scripted"),
    ],
)
def test_hand_built_h100_is_the_captured_one(gpu: GpuInfo) -> None:
    assert _identity(gpu) == _expected()
    assert gpu.serial.startswith(_captured()["gpu"]["serial_prefix"]) and len(gpu.serial) == 13
    memory = _mig_memory()
    assert gpu.mig_devices, "the case has MIG devices to compare"
    for mig in gpu.mig_devices:
        assert mig.memory_total_mib == memory[mig.profile], mig.profile


async def test_scripted_inventory_and_sandbox_agree() -> None:
    scripted = await ScriptedGpus(1).inventory()
    assert _identity(scripted.gpus[0]) == _identity(sandbox_inventory(1).gpus[0])
