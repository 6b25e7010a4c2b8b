"""Which entries a GPU takes, as mig-parted walks them (``cmd/nvidia-mig-parted/assert/assert.go``
``WalkSelectedMigConfigForEachGPU``): every matching entry, in file order."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import events, testing
from nodeagent import settings as S
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.cli import main
from nodeagent.errors import ConfigError
from nodeagent.labels.node_status import mig_condition
from nodeagent.mig.config import parse_text
from nodeagent.mig.planner import Action, applied, plan_node
from nodeagent.mig.service import plan_or_raise
from nodeagent.mig.subsystem import MigSubsystem
from nodeagent.subsystem import Phase
from tests.mig.support import identity, state


def _config(*entries: str) -> str:
    return "version: v1\nmig-configs:\n  c:\n" + "".join(entries)


ALL_1G = '    - devices: all\n      mig-enabled: true\n      mig-devices: {"1g.10gb": 7}\n'
GPU0_7G = '    - devices: [0]\n      mig-enabled: true\n      mig-devices: {"7g.80gb": 1}\n'
MISFIT = '    - devices: all\n      mig-enabled: true\n      mig-devices: {"4g.40gb": 1, "3g.40gb": 2}\n'
TOO_MANY = '    - devices: [0]\n      mig-enabled: true\n      mig-devices: {"3g.40gb": 3}\n'
ALL_OFF = "    - devices: all\n      mig-enabled: false\n"


def test_a_gpu_matching_two_entries_ends_with_the_last_ones_layout() -> None:
    config = parse_text(_config(ALL_1G, GPU0_7G), source="f").select("c")
    gpus = [state(index=0), state(index=1)]
    config.validate([g.gpu for g in gpus])
    plan = plan_node(config, gpus)
    assert [gp.entry.index if gp.entry else None for gp in plan.gpus] == [1, 0]
    created = {gp.gpu: sorted(s.profile for s in gp.steps if s.action == Action.CREATE) for gp in plan.gpus}
    assert created == {0: ["7g.80gb"], 1: ["1g.10gb"] * 7}
    done = [state([("7g.80gb", 0)], index=0), state([("1g.10gb", i) for i in range(7)], index=1)]
    assert applied(config, done) == (True, [])


@pytest.mark.parametrize(
    ("entries", "key", "message"),
    [
        ((MISFIT, GPU0_7G), "mig-configs.c[0].mig-devices", "does not fit"),
        ((TOO_MANY, ALL_1G), "mig-configs.c[0].mig-devices.3g.40gb", "3 exceeds the maximum of 2"),
    ],
)
async def test_an_impossible_earlier_entry_fails_although_a_later_one_overrides_it(
    entries: tuple[str, ...], key: str, message: str
) -> None:
    """mig-parted applies the earlier entry too (``cmd/nvidia-mig-parted/apply/config.go``) and fails on it."""
    config = parse_text(_config(*entries), source="f").select("c")
    sim = SimGpuBackend("h100-80gb-hbm3", 2)
    inventory = await sim.inventory()
    await sim.close()
    with pytest.raises(ConfigError) as info:
        plan_or_raise(config, inventory)
    assert info.value.key == key and message in str(info.value)
    assert "GPU 0" in str(info.value)


def test_entries_that_disagree_on_the_mode_are_refused_before_anything_changes() -> None:
    """mig-parted sets each entry's mode in turn, then fails on the entry whose mode lost
    (``apply/config.go``: "MIG mode is currently enabled, but the configuration specifies it should be
    disabled"); we refuse the same config up front."""
    config = parse_text(_config(ALL_OFF, GPU0_7G), source="f").select("c")
    gpus = [state(enabled=False, index=0), state(enabled=False, index=1)]
    with pytest.raises(ConfigError) as info:
        config.validate([g.gpu for g in gpus])
    assert info.value.key == "mig-configs.c[1].mig-enabled"
    assert "mig-configs.c[0] (mig-enabled: false), mig-configs.c[1] (mig-enabled: true)" in str(info.value)
    plan = plan_node(config, gpus)
    assert plan.errors and plan.errors[0].startswith("GPU 0: GPU 0 (NVIDIA H100 80GB HBM3) is matched by")
    assert not plan.gpus[0].steps
    ok, differences = applied(config, [state([("7g.80gb", 0)], index=0), gpus[1]])
    assert not ok and "must agree on mig-enabled" in differences[0]
    assert identity(1) == gpus[1].gpu


STATION = (
    "version: v1\nmig-configs:\n  station:\n"
    '    - device-filter: ["0x20B010DE", "0x20B210DE"]\n      devices: [0, 1, 2, 3]\n      mig-enabled: true\n'
    '      mig-devices: {"1g.5gb": 7}\n'
    '    - device-filter: "0x1FB010DE"\n      devices: [4]\n      mig-enabled: false\n'
)


async def test_no_entry_matching_any_gpu_fails_by_default_saying_why(tmp_path: Path) -> None:
    """mig-parted's apply is a successful no-op then (its walk simply visits no GPU); ours fails, saying what
    the GPUs are and what the entries ask for, unless ``mig.no_match = "succeed"``."""
    path = tmp_path / "station.yaml"
    path.write_text(STATION)
    sim = SimGpuBackend("h100-80gb-hbm3", 3, 0)
    sub = _subsystem(tmp_path / "node", sim, config_file=str(path))
    await sub.start()
    readiness = sub.ctx.bus.last(events.MIG_READY)
    assert (readiness.config, readiness.state) == ("station", "failed")
    assert (
        "no entry of config 'station' matches any GPU of this node (GPU 0-2: NVIDIA H100 80GB HBM3 "
        "(0x233010DE:0x16C110DE); entries: mig-configs.station[0] devices [0, 1, 2, 3], device-filter 0x20B010DE, "
        "0x20B210DE; mig-configs.station[1] devices [4], device-filter 0x1FB010DE)" in readiness.reason
    )
    assert 'set mig.no_match = "succeed"' in readiness.reason
    _, _, message = mig_condition(readiness)
    assert "no entry of config 'station' matches any GPU" in message

    sub = _subsystem(tmp_path / "node", sim, config_file=str(path), no_match="succeed")
    await sub.start()
    readiness = sub.ctx.bus.last(events.MIG_READY)
    assert (readiness.state, sub.status().phase) == ("success", Phase.RUNNING)
    assert readiness.reason.endswith(': left as they are (mig.no_match = "succeed")')
    assert not any(g.mig_enabled for g in (await sim.inventory()).gpus)
    await sim.close()


def test_no_match_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "station.yaml"
    path.write_text(STATION)
    argv = ["mig", "apply", "--simulate", "h100-80gb-hbm3:2", "--root", str(tmp_path / "node"), "-f", str(path)]
    assert main(argv) == 2
    assert "no entry of config 'station' matches any GPU of this node (GPU 0, 1: " in capsys.readouterr().err
    monkeypatch.setenv("NODEAGENT_MIG__NO_MATCH", "succeed")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "GPU 1: no entry matches it; left as it is" in out and "MIG configuration applied successfully" in out


def _subsystem(root: Path, sim: SimGpuBackend, **mig: str) -> MigSubsystem:
    settings = S.replace(S.Settings(), "mig", config="station", **mig)
    ctx = testing.context(Root(root), settings, gpus=sim, node_name="n")
    return MigSubsystem(ctx)


async def test_the_agent_warns_about_a_name_style_device_filter_in_its_plan(tmp_path: Path) -> None:
    path = tmp_path / "named.yaml"
    path.write_text(
        "version: v1\nmig-configs:\n  station:\n    - devices: all\n      mig-enabled: false\n"
        '    - device-filter: "A100-SXM4-40GB"\n      devices: all\n      mig-enabled: false\n'
    )
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    sub = _subsystem(tmp_path / "node", sim, config_file=str(path))
    plan = sub.plan(await sub.observe())
    assert not plan.error and plan.warnings == (
        f"{path}: mig-configs.station[1].device-filter: 'A100-SXM4-40GB' is not a PCI id (e.g. \"0x233010DE\"): it "
        "matches no GPU, as in mig-parted; this entry applies to no GPU",
    )
    await sim.close()
