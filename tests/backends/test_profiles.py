"""Simulation profiles: the H100 capture values, the JSON format and its errors, specs and MIG placement."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nodeagent.backends.gpu.sim.profiles import (
    builtin_names,
    load_profile,
    parse_mig_layout,
    parse_simulate_spec,
    profile_from_json,
    profile_to_json,
)
from nodeagent.errors import ConfigError
from nodeagent.model.gpu import GPM_READINGS, Reading
from nodeagent.model.mig import find_placement, gpu_instance_id, placement_problem

CAPTURE = Path(__file__).parent / "data/h100-80gb-hbm3"
"""A capture of a real H100 80GB HBM3 (nvidia-smi -q, an NVML probe, the MIG profile list)."""


def test_h100_values_are_the_capture() -> None:
    p = load_profile("h100-80gb-hbm3")
    assert p.name == "NVIDIA H100 80GB HBM3"
    assert p.memory_total_mib == 81559
    assert p.memory_reserved_mib == 480
    assert p.pci_device_id == 0x2330
    assert p.pci_subsystem_id == 0x16C110DE
    assert p.compute_capability == (9, 0)
    assert (p.driver_version, p.nvml_version, p.cuda_driver_version) == ("580.159.04", "13.580.159.04", 13000)
    assert p.vbios_version == "96.00.DA.00.0C"
    assert (p.power_limit_w, p.power_min_limit_w, p.power_max_limit_w) == (700.0, 200.0, 700.0)
    assert (p.sm_clock_idle_mhz, p.sm_clock_max_mhz, p.mem_clock_max_mhz) == (345, 1980, 2619)
    assert (p.temp_idle_c, p.memory_temp_idle_c) == (50.0, 52.0)
    assert p.architecture == "Hopper" and p.default_count == 8
    # NotSupported on that card (nvml-probe.txt): retired pages, fan; GPM is supported. NVLink was
    # NotSupported too, in a single-GPU VM: the profile models the SXM5 board's NVLink 4 instead.
    assert {Reading.RETIRED_SBE, Reading.RETIRED_DBE, Reading.RETIRED_PENDING} <= p.not_supported
    assert Reading.FAN_SPEED_PCT in p.not_supported
    assert Reading.NVLINK_BANDWIDTH_TOTAL not in p.not_supported and p.nvlink_bandwidth_gbs == 900
    assert not p.not_supported & GPM_READINGS and p.gpm_supported


def test_h100_values_match_the_capture_files() -> None:
    p = load_profile("h100-80gb-hbm3")
    smi = (CAPTURE / "nvidia-smi-q.txt").read_text()

    def smi_has(label: str, value: str) -> bool:
        return re.search(rf"^\s*{re.escape(label)}\s+: {re.escape(value)}$", smi, re.MULTILINE) is not None

    assert smi_has("Product Name", p.name)
    assert smi_has("Total", f"{p.memory_total_mib} MiB")
    assert smi_has("Reserved", f"{p.memory_reserved_mib} MiB")
    assert smi_has("Device Id", f"0x{p.pci_device_id:04X}10DE")
    assert smi_has("Sub System Id", f"0x{p.pci_subsystem_id:08X}")
    assert smi_has("VBIOS Version", p.vbios_version)
    assert smi_has("Driver Version", p.driver_version)
    assert smi_has("Max Power Limit", f"{p.power_max_limit_w:.2f} W")
    assert smi_has("Memory Current Temp", f"{p.memory_temp_idle_c:.0f} C")
    probe = (CAPTURE / "nvml-probe.txt").read_text()
    assert f"driver {p.driver_version} nvml {p.nvml_version} cuda {p.cuda_driver_version}" in probe
    # gi_profile <index> <id> <compute slices> <instances> <MiB> <SMs> <copy engines>
    by_id = {m.profile_id: m for m in p.mig_profiles}
    for line in probe.splitlines():
        parts = line.split()
        if parts[:1] == ["gi_profile"] and parts[2] != "ERR":
            _, _, pid, slices, count, mib, sms, _ce = parts
            m = by_id[int(pid)]
            assert (m.compute_slices, m.max_count, m.memory_mib) == (int(slices), int(count), int(mib))
            assert p.mig_details[m.name]["multiprocessors"] == int(sms)


def test_h100_placements_are_those_of_the_hardware() -> None:
    table = {
        m.name: (m.profile_id, m.starts, m.slices, m.max_count) for m in load_profile("h100-80gb-hbm3").mig_profiles
    }
    assert table == {
        "1g.10gb": (19, (0, 1, 2, 3, 4, 5, 6), 1, 7),
        "1g.10gb+me": (20, (0, 1, 2, 3, 4, 5, 6), 1, 1),
        "1g.20gb": (15, (0, 2, 4, 6), 2, 4),
        "2g.20gb": (14, (0, 2, 4), 2, 3),
        "3g.40gb": (9, (0, 4), 4, 2),
        "4g.40gb": (5, (0,), 4, 1),
        "7g.80gb": (0, (0,), 8, 1),
    }


def test_every_builtin_loads_and_round_trips() -> None:
    assert builtin_names() == ["a100-sxm4-40gb", "a100-sxm4-80gb", "h100-80gb-hbm3", "h200-141gb-hbm3e", "l4", "t4"]
    for name in builtin_names():
        p = load_profile(name)
        again = profile_from_json(json.loads(json.dumps(profile_to_json(p))), source="x", key=p.key)
        assert again == p
    assert load_profile("a100-sxm4-40gb").mig_profile("1g.5gb").memory_mib == 4864
    assert load_profile("a100-sxm4-80gb").pci_device_id == 0x20B2
    assert not load_profile("l4").mig_capable and not load_profile("t4").mig_capable
    assert Reading.RETIRED_SBE not in load_profile("t4").not_supported
    assert not load_profile("a100-sxm4-80gb").gpm_supported  # GPM is Hopper and later
    assert [load_profile(n).gpm_supported for n in ("h200-141gb-hbm3e", "l4", "t4")] == [True, False, False]


def test_simulate_spec() -> None:
    assert parse_simulate_spec(None) == ("h100-80gb-hbm3", 8)
    assert parse_simulate_spec("") == ("h100-80gb-hbm3", 8)
    assert parse_simulate_spec("t4:2") == ("t4", 2)
    assert parse_simulate_spec("a100-sxm4-80gb") == ("a100-sxm4-80gb", 8)
    with pytest.raises(ConfigError, match=r"did you mean 'h100-80gb-hbm3'"):
        parse_simulate_spec("h100-80gb:4")
    with pytest.raises(ConfigError, match="between 1 and 64"):
        parse_simulate_spec("t4:0")


def test_simulate_spec_with_a_profile_file(tmp_path: Path) -> None:
    doc = profile_to_json(load_profile("t4"))
    doc["count"] = 3
    path = tmp_path / "my:node.json"
    path.write_text(json.dumps(doc))
    assert parse_simulate_spec(str(path)) == (str(path), 3)
    assert parse_simulate_spec(f"{path}:5") == (str(path), 5)
    assert load_profile(str(path)).name == "Tesla T4"


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["gpu"].pop("name"), "gpu.name: missing"),
        (lambda d: d["gpu"].__setitem__("memory_total_mib", "80GB"), "gpu.memory_total_mib: expected an integer"),
        (lambda d: d["gpu"].__setitem__("memmory_reserved", 1), "did you mean 'memory_reserved_mib'"),
        (lambda d: d.__setitem__("not_supported", ["fan_speed"]), "not_supported[0]: unknown reading 'fan_speed'"),
        (lambda d: d.__setitem__("format", "v0"), "unsupported profile format"),
        (lambda d: d["mig"]["profiles"][2].__setitem__("starts", [7]), "mig.profiles[2].starts: start 7 + size 2"),
        (lambda d: d["gpu"]["power"].__setitem__("idle_w", 900.0), "gpu.power.idle_w: must be below limit_w"),
        (lambda d: d["gpu"].__setitem__("compute_capability", [9]), "expected [major, minor]"),
    ],
)
def test_bad_profile_files_name_the_file_and_key(tmp_path: Path, edit: object, message: str) -> None:
    doc = profile_to_json(load_profile("h100-80gb-hbm3"))
    edit(doc)  # type: ignore[operator]
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "format": "nodeagent.gpu-profile/v1",\n  "count": ,\n}')
    with pytest.raises(ConfigError, match=rf"{path}:3: malformed JSON"):
        load_profile(str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_profile(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------------------------------- placement


H100 = load_profile("h100-80gb-hbm3")


def _fits(*names: str) -> list[int] | None:
    return find_placement([H100.mig_profile(n) for n in names], memory_slices=8, compute_slices=7)


def test_valid_and_invalid_combinations_from_the_hardware() -> None:
    assert _fits("4g.40gb", "3g.40gb") == [0, 4]
    assert _fits("4g.40gb", "2g.20gb", "1g.10gb") == [0, 4, 6]
    assert _fits("4g.40gb", "1g.10gb", "1g.10gb", "1g.10gb") == [0, 4, 5, 6]
    assert _fits("4g.40gb", "2g.20gb", "2g.20gb") is None  # a 2g cannot start at 6
    assert _fits("3g.40gb", "2g.20gb", "2g.20gb") == [4, 0, 2]  # only with the 3g at 4
    assert _fits("2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb") == [0, 2, 4, 6]
    assert _fits("1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb") == [0, 2, 4, 6]
    assert _fits("3g.40gb", "3g.40gb", "1g.10gb") is None  # two 3g use every memory slice
    assert _fits(*["1g.10gb"] * 7) == list(range(7))
    assert _fits(*["1g.10gb"] * 8) is None
    assert _fits("1g.10gb+me", "1g.10gb+me") is None
    assert _fits("7g.80gb") == [0]


def test_placement_problems_are_explained() -> None:
    g1, g2, g3 = (H100.mig_profile(n) for n in ("1g.10gb", "2g.20gb", "3g.40gb"))
    kw = {"memory_slices": 8, "compute_slices": 7}
    assert placement_problem(g2, 1, [], **kw) == "2g.20gb cannot start at memory slice 1 (allowed starts: 0, 2, 4)"
    assert "overlaps 3g.40gb at 0:4" in (placement_problem(g2, 2, [(g3, 0)], **kw) or "")
    # Fragmentation: 1g instances at 1, 3 and 5 leave no room for a 2g.
    scattered = [(g1, 1), (g1, 3), (g1, 5)]
    assert find_placement([g2], scattered, **kw) is None
    assert "at most 1 instance" in (
        placement_problem(H100.mig_profile("4g.40gb"), 0, [(H100.mig_profile("4g.40gb"), 0)], **kw) or ""
    )
    assert placement_problem(g1, 6, [(g3, 0), (g2, 4)], **kw) is None


def test_gpu_instance_ids_follow_the_placement() -> None:
    assert gpu_instance_id(0, 8) == 0
    assert (gpu_instance_id(0, 4), gpu_instance_id(4, 4)) == (1, 2)
    assert [gpu_instance_id(s, 2) for s in (0, 2, 4, 6)] == [3, 4, 5, 6]
    assert [gpu_instance_id(s, 1) for s in range(7)] == [7, 8, 9, 10, 11, 12, 13]


def test_mig_layout_specs() -> None:
    assert [m.name for m, _ in parse_mig_layout("1g.10gb*7", H100)] == ["1g.10gb"] * 7
    assert [m.name for m, _ in parse_mig_layout(" 3g.40gb , 4g.40gb ", H100)] == ["3g.40gb", "4g.40gb"]
    assert parse_mig_layout("", H100) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1g.5gb*7", "unknown MIG profile '1g.5gb' for NVIDIA H100 80GB HBM3"),
        ("2g.20gb*x", "bad count in '2g.20gb*x'"),
        ("3g.40gb,,", "empty entry"),
        ("1g.10gb*8", "at most 7 instance(s) of 1g.10gb"),
        ("4g.40gb,2g.20gb*2", "does not fit on one NVIDIA H100 80GB HBM3"),
    ],
)
def test_bad_mig_layouts(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mig_layout(spec, H100)
    text = str(info.value)
    assert message in text and "simulation.mig_layout" in text
    if "unknown MIG profile" in message:
        assert "valid: 1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb" in text


def test_layout_on_a_gpu_without_mig() -> None:
    with pytest.raises(ConfigError, match=r"NVIDIA L4 .* is not MIG-capable"):
        parse_mig_layout("1g.10gb", load_profile("l4"))
