"""The NVML backend on a real GPU, compared with nvidia-smi. Skipped where no NVIDIA driver is present."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from integration.gpu.conftest import GpuDriver
from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.record import record_profile
from nodeagent.backends.gpu.sim.profiles import load_profile
from nodeagent.model.gpu import GpuHealthState, Reading, SampleRequest

pytestmark = pytest.mark.gpu


def smi(driver: GpuDriver, *args: str) -> list[list[str]]:
    out = subprocess.run(
        [driver.nvidia_smi, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=driver.smi_env(),
    ).stdout
    return [[field.strip() for field in line.split(",")] for line in out.strip().splitlines() if line.strip()]


async def test_inventory_matches_nvidia_smi(gpu_driver: GpuDriver) -> None:
    rows = smi(gpu_driver, "--query-gpu=index,uuid,name,pci.bus_id,memory.total", "--format=csv,noheader,nounits")
    (driver_version,) = smi(gpu_driver, "--query-gpu=driver_version", "--format=csv,noheader")[0]
    backend = NvmlBackend(call_timeout_s=10.0, driver_root=gpu_driver.root)
    await backend.open()
    try:
        inv = await backend.inventory()
        req = SampleRequest(frozenset(Reading))
        await backend.sample(req)
        sample = await backend.sample(req)
    finally:
        await backend.close()
    assert inv.driver_version == driver_version
    ours = [[str(g.index), g.uuid, g.name, g.pci_bus_id, str(g.memory_total_mib)] for g in inv.gpus]
    assert ours == [[r[0], r[1], r[2], r[3].upper(), r[4]] for r in rows]
    for g in inv.gpus:
        assert g.health == GpuHealthState.OK
        values = sample.gpus[g.index]
        assert {Reading.GPU_TEMP_C, Reading.POWER_W, Reading.FB_TOTAL_MIB, Reading.SM_CLOCK_MHZ} <= set(values)
        fb = values[Reading.FB_USED_MIB] + values[Reading.FB_FREE_MIB] + values.get(Reading.FB_RESERVED_MIB, 0)
        assert abs(fb - values[Reading.FB_TOTAL_MIB]) <= 2  # each is rounded down to MiB
    assert 0 < sample.call_seconds <= sample.duration_s


async def test_record_and_replay_this_node(gpu_driver: GpuDriver, tmp_path: Path) -> None:
    out = record_profile(driver_root=gpu_driver.root, out=tmp_path / "node.json")
    profile = load_profile(str(out))
    rows = smi(gpu_driver, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
    assert (profile.name, str(profile.memory_total_mib)) == (rows[0][0], rows[0][1])
