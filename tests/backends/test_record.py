"""`nodeagent sim record`: a real node (here the fake NVML from the H100 capture) into a profile, and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.backends.gpu.record import record_profile
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.gpu.sim.profiles import load_profile, parse_simulate_spec
from nodeagent.errors import BackendUnavailable
from nodeagent.model.gpu import GPM_READINGS, Reading, SampleRequest
from tests.backends.fake_nvml import FakeNvml, h100_node


async def test_record_then_replay(tmp_path: Path) -> None:
    fake = FakeNvml(h100_node(4, mig_on=(0,)))
    out = record_profile(driver_root=None, out=tmp_path / "node.json", nvml=fake)
    assert out == tmp_path / "node.json"
    assert fake.shutdowns == 1
    p = load_profile(str(out))
    builtin = load_profile("h100-80gb-hbm3")
    assert (p.name, p.memory_total_mib, p.memory_reserved_mib, p.pci_device_id, p.pci_subsystem_id) == (
        builtin.name,
        81559,
        480,
        0x2330,
        0x16C110DE,
    )
    assert (p.compute_capability, p.driver_version, p.nvml_version, p.cuda_driver_version) == (
        (9, 0),
        "580.159.04",
        "13.580.159.04",
        13000,
    )
    assert (p.power_limit_w, p.power_min_limit_w, p.sm_clock_max_mhz, p.pcie_generation) == (700.0, 200.0, 1980, 5)
    assert p.default_count == 4
    assert {Reading.RETIRED_SBE, Reading.FAN_SPEED_PCT, Reading.NVLINK_BANDWIDTH_TOTAL} <= p.not_supported
    assert Reading.GPU_UTIL_PCT not in p.not_supported  # absent only because GPU 0 is in MIG mode
    assert not p.not_supported & GPM_READINGS
    assert [(m.name, m.starts, m.slices) for m in p.mig_profiles] == [
        (m.name, m.starts, m.slices)
        for m in sorted(builtin.mig_profiles, key=lambda m: [19, 14, 9, 5, 0, 20, 15].index(m.profile_id))
    ]
    assert p.mig_details["3g.40gb"]["multiprocessors"] == 60
    assert parse_simulate_spec(str(out)) == (str(out), 4)

    backend = SimGpuBackend(str(out), seed=1, mig_layout="3g.40gb*2")
    inv = await backend.inventory()
    assert [g.name for g in inv.gpus] == ["NVIDIA H100 80GB HBM3"] * 4
    s = await backend.sample(SampleRequest(frozenset(Reading)))
    assert Reading.FAN_SPEED_PCT not in s.gpus[0] and Reading.POWER_W in s.gpus[0]
    await backend.close()
    assert json.loads(out.read_text())["format"] == "nodeagent.gpu-profile/v1"


def test_record_without_gpus_or_driver(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="no GPU"):
        record_profile(driver_root=None, out=tmp_path / "x.json", nvml=FakeNvml([]))
    with pytest.raises(BackendUnavailable, match=r"no libnvidia-ml\.so\.1 under the driver root"):
        record_profile(driver_root=str(tmp_path), out=tmp_path / "x.json", nvml=FakeNvml(h100_node(1)))
    assert not (tmp_path / "x.json").exists()
