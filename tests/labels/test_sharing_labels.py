"""GFD's sharing labels follow nodeagent's device plugin (``labels.sharing_strategy = "auto"``, the default):
``nvidia.com/gpu.replicas``, ``.sharing-strategy`` and the ``-SHARED`` product come from the same
``[deviceplugin]`` keys and NVIDIA config file the plugin reads; ``labels.sharing_strategy`` set to anything
else overrides, as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.deviceplugin.settings import DevicePluginSettings, LabelSharing
from nodeagent.errors import ConfigError
from nodeagent.settings import Settings, replace
from tests.labels.test_labels_subsystem import make_sub
from tests.labels.test_labels_subsystem import settings as label_settings

PRODUCT = "NVIDIA-H100-80GB-HBM3"
CONFIG = """version: v1
sharing:
  timeSlicing:
    renameByDefault: {rename}
    resources:
    - name: nvidia.com/gpu
      replicas: 4
    - name: nvidia.com/mig-1g.10gb
      replicas: 2
      devices: ["0:0"]
"""


def test_the_plugin_settings_derive_the_sharing_per_resource() -> None:
    assert DevicePluginSettings().label_sharing("none") == LabelSharing({}, None)
    assert not DevicePluginSettings().label_sharing("none").time_slicing
    assert DevicePluginSettings(replicas=4).label_sharing("none") == LabelSharing({}, (4, False))
    assert DevicePluginSettings(replicas=4, rename_by_default=True).label_sharing("none").every == (4, True)
    per_gpu = DevicePluginSettings(replicas=2, replicas_per_gpu={"0": 8})
    assert per_gpu.label_sharing("none").every == (2, False)  # the entry for all devices
    assert DevicePluginSettings(replicas_per_gpu={"1": 3}).label_sharing("none").every == (3, False)
    got = DevicePluginSettings().label_sharing("mixed", CONFIG.format(rename="false"), source="cfg.yaml")
    assert got == LabelSharing({"nvidia.com/gpu": (4, False), "nvidia.com/mig-1g.10gb": (2, False)}, None)
    renamed = DevicePluginSettings().label_sharing("mixed", CONFIG.format(rename="true"), source="cfg.yaml")
    assert renamed.resources["nvidia.com/gpu"] == (4, True)


def test_a_config_the_plugin_refuses_is_refused_here_too() -> None:
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*sharing\.mps"):
        DevicePluginSettings().label_sharing("none", "version: v1\nsharing: {mps: {}}\n", source="cfg.yaml")
    with pytest.raises(ConfigError, match="both here and in"):
        DevicePluginSettings(replicas=2).label_sharing("none", CONFIG.format(rename="false"), source="cfg.yaml")


async def _labels(tmp_path: Path, s: Settings, mig_layout: str = "") -> tuple[dict[str, str], list[str]]:
    backend = SimGpuBackend("h100-80gb-hbm3", count=2, mig_layout=mig_layout)
    try:
        sub = make_sub(tmp_path, s, backend, None)
        problems: list[str] = []
        result = await sub.compute_labels(problems)
        assert result is not None
        return dict(result.labels), problems
    finally:
        await backend.close()


def _with(s: Settings, **deviceplugin: Any) -> Settings:
    return replace(s, "deviceplugin", **deviceplugin)


async def test_labels_follow_the_plugins_replicas(tmp_path: Path) -> None:
    labels, problems = await _labels(tmp_path, _with(label_settings(), replicas=4))
    assert problems == []
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/gpu.product"] == f"{PRODUCT}-SHARED"


async def test_labels_follow_the_plugins_config_file(tmp_path: Path) -> None:
    config = tmp_path / "dp-config.yaml"
    config.write_text(CONFIG.format(rename="true"))
    labels, problems = await _labels(tmp_path, _with(label_settings(), config_file=str(config)))
    assert problems == []
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/gpu.product"] == PRODUCT  # renamed (.shared): no -SHARED suffix, as GFD


async def test_mig_resources_follow_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "dp-config.yaml"
    config.write_text(CONFIG.format(rename="false"))
    s = _with(label_settings(mig_strategy="mixed"), config_file=str(config))
    labels, problems = await _labels(tmp_path, s, mig_layout="1g.10gb*7")
    assert problems == []
    assert labels["nvidia.com/mig-1g.10gb.replicas"] == "2"
    assert labels["nvidia.com/mig-1g.10gb.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/mig-1g.10gb.product"] == f"{PRODUCT}-MIG-1g.10gb-SHARED"


async def test_no_sharing_without_the_plugin_or_its_time_slicing(tmp_path: Path) -> None:
    for s in (label_settings(), _with(label_settings(), enabled=False, replicas=4)):
        labels, _ = await _labels(tmp_path, s)
        assert labels["nvidia.com/gpu.replicas"] == "1"
        assert labels["nvidia.com/gpu.sharing-strategy"] == "none"
        assert labels["nvidia.com/gpu.product"] == PRODUCT


async def test_the_old_settings_override_the_plugin(tmp_path: Path) -> None:
    s = _with(label_settings(sharing_strategy="none"), replicas=4)
    labels, _ = await _labels(tmp_path, s)
    assert labels["nvidia.com/gpu.replicas"] == "1" and labels["nvidia.com/gpu.sharing-strategy"] == "none"
    s = _with(label_settings(sharing_strategy="mps", replicas=3), replicas=4)
    labels, _ = await _labels(tmp_path, s)
    assert labels["nvidia.com/gpu.replicas"] == "3" and labels["nvidia.com/gpu.sharing-strategy"] == "mps"


async def test_a_bad_config_file_is_a_named_problem(tmp_path: Path) -> None:
    config = tmp_path / "dp-config.yaml"
    config.write_text("version: v2\n")
    labels, problems = await _labels(tmp_path, _with(label_settings(), config_file=str(config)))
    assert labels["nvidia.com/gpu.sharing-strategy"] == "none"
    assert len(problems) == 1 and str(config) in problems[0] and "version" in problems[0]
    missing = str(tmp_path / "absent.yaml")
    _, problems = await _labels(tmp_path, _with(label_settings(), config_file=missing))
    assert len(problems) == 1 and "deviceplugin.config_file" in problems[0] and missing in problems[0]
