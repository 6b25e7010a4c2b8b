"""Choosing and opening the GPU backend from settings; probing for a driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import settings as settings_mod
from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.nvml.library import probe_driver
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.compose import backend_kind, open_gpu_backend
from nodeagent.errors import BackendUnavailable, ConfigError


def make(**sections: dict[str, object]) -> settings_mod.Settings:
    return settings_mod.load(cli={(s, k): v for s, kv in sections.items() for k, v in kv.items()})


async def test_simulation_gives_eight_h100_by_default() -> None:
    s = make(simulation={"enabled": True})
    assert backend_kind(s) == "sim"
    backend = await open_gpu_backend(s)
    try:
        assert isinstance(backend, SimGpuBackend)
        inv = await backend.inventory()
        assert [(g.name, g.memory_total_mib) for g in inv.gpus] == [("NVIDIA H100 80GB HBM3", 81559)] * 8
    finally:
        await backend.close()


async def test_simulation_settings_are_used() -> None:
    s = make(
        simulation={"enabled": True, "profile": "a100-sxm4-40gb", "count": 2, "seed": 4, "mig_layout": "3g.20gb*2"}
    )
    backend = await open_gpu_backend(s)
    try:
        inv = await backend.inventory()
        assert [len(g.mig_devices) for g in inv.gpus] == [2, 2]
        assert inv.gpus[0].name == "NVIDIA A100-SXM4-40GB"
    finally:
        await backend.close()


async def test_bad_simulation_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown simulation profile 'h200'"):
        await open_gpu_backend(make(simulation={"enabled": True, "profile": "h200"}))
    with pytest.raises(ConfigError, match=r"unknown MIG profile '1g\.5gb'"):
        await open_gpu_backend(make(simulation={"enabled": True, "mig_layout": "1g.5gb*7"}))


def test_backend_choice() -> None:
    assert backend_kind(make()) == "nvml"
    assert backend_kind(make(gpu={"backend": "sim"})) == "sim"
    assert backend_kind(make(gpu={"backend": "nvml"}, simulation={"enabled": True})) == "nvml"


async def test_no_driver_here_is_a_clear_unavailable(tmp_path: Path) -> None:
    """This machine has no NVIDIA driver: the real pynvml cannot load libnvidia-ml.so.1."""
    probe = probe_driver()
    if probe.present:
        pytest.skip("an NVIDIA driver is present on this machine")
    with pytest.raises(BackendUnavailable) as info:
        await open_gpu_backend(make(gpu={"backend": "nvml"}))
    assert "NVIDIA driver not found" in str(info.value) and "--simulate" in str(info.value)
    with pytest.raises(BackendUnavailable, match=r"no libnvidia-ml\.so\.1 under the driver root"):
        await open_gpu_backend(make(), driver_root=str(tmp_path))


def test_probe_driver(tmp_path: Path) -> None:
    lib = tmp_path / "lib64"
    lib.mkdir()
    (lib / "libnvidia-ml.so.580.159.04").write_bytes(b"x")
    (lib / "libnvidia-ml.so.1").symlink_to("libnvidia-ml.so.580.159.04")
    loaded: list[str] = []
    probe = probe_driver(str(tmp_path), load_library=loaded.append)
    assert probe.present and probe.library == str(lib / "libnvidia-ml.so.580.159.04") == loaded[0]
    missing = probe_driver(str(tmp_path / "nothing"))
    assert not missing.present and "no libnvidia-ml.so.1 under the driver root" in missing.reason

    def refuse(path: str) -> None:
        raise OSError(f"{path}: cannot open shared object file")

    none = probe_driver(load_library=refuse)
    assert not none.present and "cannot open shared object file" in none.reason


def test_nvml_backend_gets_the_timeout_and_driver_root() -> None:
    from nodeagent.compose import make_gpu_backend

    backend = make_gpu_backend(make(gpu={"backend": "nvml", "call_timeout_s": 0.5}), driver_root="/usr/local/nvidia")
    assert isinstance(backend, NvmlBackend)
    assert backend.driver_root == "/usr/local/nvidia"
