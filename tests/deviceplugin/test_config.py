"""NVIDIA's device-plugin config file v1, accepted as is; what is not supported is a named error."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.deviceplugin import config
from nodeagent.deviceplugin.resources import SharedResource, TimeSlicing
from nodeagent.deviceplugin.subsystem import DevicePluginSubsystem
from nodeagent.errors import ConfigError
from nodeagent.settings import Settings, replace

SRC = "/config/nvidia-plugin.yaml"
TIME_SLICING = """
version: v1
flags:
  migStrategy: none
  plugin:
    deviceIDStrategy: index
    deviceListStrategy: [envvar, cdi-cri]
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
    - name: nvidia.com/gpu
      replicas: 4
      devices: [0, "GPU-abc"]
    - name: nvidia.com/gpu
      replicas: 2
      devices: [1]
"""


def test_a_time_slicing_configmap_is_read_as_is() -> None:
    parsed = config.parse(TIME_SLICING, source=SRC)
    assert parsed.mig_strategy == "none"
    assert parsed.device_id_strategy == "index"
    assert parsed.device_list_strategy == ("envvar", "cdi-cri")
    assert parsed.time_slicing == TimeSlicing(
        (
            SharedResource(4, "nvidia.com/gpu", devices=("0", "GPU-abc")),
            SharedResource(2, "nvidia.com/gpu", devices=("1",)),
        ),
        rename_by_default=True,
        fail_requests_greater_than_one=True,
    )
    eff = config.effective(Settings().deviceplugin, "none", parsed, source=SRC)
    assert eff.device_id_strategy == "index" and eff.time_slicing == parsed.time_slicing and eff.source == SRC


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("version: v2\n", "version", "version must be 'v1'"),
        ("version: v1\nflags: {failOnInitError: true}\n", "flags.failOnInitError", "not supported"),
        ("version: v1\nresources: {gpus: []}\n", "resources", "not supported"),
        ("version: v1\nsharing: {mps: {resources: []}}\n", "sharing.mps", "MPS is out of scope"),
        ("version: v1\nflags: {migStrategy: split}\n", "flags.migStrategy", "'split' is not one of"),
        (
            "version: v1\nflags: {plugin: {deviceListStrategy: volume-mounts}}\n",
            "flags.plugin.deviceListStrategy",
            "volume-mounts is not supported",
        ),
        (
            "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 0}]}}\n",
            "sharing.timeSlicing.resources[0].replicas",
            "must be an integer >= 1",
        ),
        (
            "version: v1\nsharing: {timeSlicing: {resources: [{name: amd.com/gpu, replicas: 2}]}}\n",
            "sharing.timeSlicing.resources[0].name",
            "name must be nvidia.com/gpu",
        ),
        (
            "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [0]},"
            " {name: nvidia.com/gpu, replicas: 3, devices: [0]}]}}\n",
            "sharing.timeSlicing.resources[1]",
            r"device 0 is also in resources\[0\]",
        ),
        (
            "version: v1\nsharing: {timeSlicing: {renameByDefault: yes please}}\n",
            "sharing.timeSlicing.renameByDefault",
            "true or false",
        ),
        ("version: [v1\n", "", "malformed YAML"),
    ],
)
def test_what_is_not_supported_is_named(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config.parse(text, source=SRC)
    assert err.value.source == SRC and err.value.key == key


def test_the_mig_strategy_is_the_labels_one() -> None:
    parsed = config.parse("version: v1\nflags: {migStrategy: mixed}\n", source=SRC)
    with pytest.raises(ConfigError, match=r"differs from labels\.mig_strategy 'none'") as err:
        config.effective(Settings().deviceplugin, "none", parsed, source=SRC)
    assert err.value.key == "flags.migStrategy"
    assert config.effective(Settings().deviceplugin, "mixed", parsed, source=SRC).mig_strategy == "mixed"


def test_time_slicing_in_both_places_is_refused() -> None:
    parsed = config.parse(TIME_SLICING, source=SRC)
    with pytest.raises(ConfigError, match="set both here and in \\[deviceplugin\\]"):
        config.effective(replace(Settings(), "deviceplugin", replicas=2).deviceplugin, "none", parsed, source=SRC)


def test_time_slicing_from_settings() -> None:
    dp = replace(Settings(), "deviceplugin", replicas=2, replicas_per_gpu={"3": 8}, rename_by_default=True).deviceplugin
    assert config.from_settings(dp) == TimeSlicing(
        (SharedResource(8, devices=("3",)), SharedResource(2)), rename_by_default=True
    )


async def test_a_bad_file_fails_the_subsystem_with_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "plugin.yaml"
    path.write_text("version: v1\nsharing:\n  mps:\n    resources: []\n")
    s = replace(Settings(), "deviceplugin", config_file=str(path))
    sub = DevicePluginSubsystem(testing.context(Root(tmp_path / "root"), s))
    with pytest.raises(ConfigError) as err:
        await sub.start()
    assert str(err.value).startswith(f"{path}: sharing.mps: MPS is out of scope")
    missing = replace(Settings(), "deviceplugin", config_file=str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="config file not found"):
        await DevicePluginSubsystem(testing.context(Root(tmp_path / "root"), missing)).start()


async def test_a_changed_config_file_is_used_live_and_a_bad_one_keeps_the_old(tmp_path: Path) -> None:
    from tests.deviceplugin.support import running, settings, until

    path = tmp_path / "plugin.yaml"
    path.write_text("version: v1\n")
    s = replace(settings(), "deviceplugin", config_file=str(path))
    async with running(tmp_path / "root", s) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable("nvidia.com/gpu") == 2)
        path.write_text(
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 3}\n"
        )
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable("nvidia.com/gpu") == 6)
        path.write_text("version: v1\nsharing: {mps: {}}\n")
        await until(lambda: "MPS is out of scope" in r.plugin.status().reason, "the bad file reported")
        assert "the previous config stays in effect" in r.plugin.status().reason
        assert r.kubelet.allocatable("nvidia.com/gpu") == 6
