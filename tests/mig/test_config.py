"""mig-parted's v1 config format: what it accepts, what it refuses (naming file, config, entry and key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.errors import ConfigError
from nodeagent.mig.config import DeviceId, load_file, parse_text, render
from tests.mig.support import identity

GOOD = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
  mixed:
    - device-filter: ["0x233010DE", "0x20B010DE"]
      devices: [0, 1]
      mig-enabled: true
      mig-devices:
        "1g.10gb+me": 1
        "3g.40gb": 2
    - device-filter: "0x233010DE"
      devices: [2]
      mig-enabled: false
"""


def test_parses_every_form() -> None:
    f = parse_text(GOOD, source="good.yaml")
    assert sorted(f.configs) == ["all-disabled", "all-enabled", "mixed"]
    enabled = f.select("all-enabled").entries[0]
    assert (enabled.devices, enabled.mig_enabled, enabled.mig_devices) == (None, True, ())
    first, second = f.select("mixed").entries
    assert first.devices == (0, 1)
    assert [str(d) for d in first.device_filter] == ["0x233010DE", "0x20B010DE"]
    assert first.wanted == {"1g.10gb+me": 1, "3g.40gb": 2}
    assert [str(d) for d in second.device_filter] == ["0x233010DE"]
    h100 = [identity(i) for i in range(4)]
    mixed = f.select("mixed")
    assert [mixed.entry_for(g) for g in h100] == [first, first, second, None]


def test_device_filter_with_subsystem_and_matching() -> None:
    gpu = DeviceId.of_gpu(0x2330, 0x16C110DE)
    assert str(gpu) == "0x233010DE:0x16C110DE"
    assert DeviceId.parse("0x233010de").matches(gpu)
    assert DeviceId.parse("0x233010DE:0x16C110DE").matches(gpu)
    assert not DeviceId.parse("0x233010DE:0x000010DE").matches(gpu)
    assert not DeviceId.parse("0x20B010DE").matches(gpu)


def test_only_config_is_selected_without_a_name() -> None:
    f = parse_text("version: v1\nmig-configs:\n  one:\n    - devices: all\n      mig-enabled: false\n", source="x")
    assert f.select(None).name == "one"


A0 = "version: v1\nmig-configs:\n  a:\n    - devices: all\n"

BAD = [
    ("version: v2\nmig-configs: {}\n", "version", "unknown version 'v2'"),
    ("mig-configs: {}\n", "version", "missing"),
    ("version: v1\nmig-config: {}\n", "mig-config", "did you mean 'mig-configs'"),
    ("version: v1\nmig-configs: {}\n", "mig-configs", "non-empty"),
    ("version: v1\nmig-configs:\n  a: []\n", "mig-configs.a", "non-empty list"),
    (A0, "mig-configs.a[0].mig-enabled", "missing"),
    (
        "version: v1\nmig-configs:\n  a:\n    - devices: some\n      mig-enabled: false\n",
        "mig-configs.a[0].devices",
        "expected `all` or a list",
    ),
    (
        A0 + "      mig-enabled: false\n      mig-device: {}\n",
        "mig-configs.a[0].mig-device",
        "did you mean 'mig-devices'",
    ),
    (
        A0 + "      mig-enabled: true\n",
        "mig-configs.a[0].mig-devices",
        "required when mig-enabled is true",
    ),
    (
        A0 + '      mig-enabled: false\n      mig-devices: {"1g.10gb": 1}\n',
        "mig-configs.a[0].mig-devices",
        "mig-enabled is false",
    ),
    (
        A0 + '      mig-enabled: true\n      mig-devices: {"1g.10gb": -1}\n',
        "mig-configs.a[0].mig-devices.1g.10gb",
        "count >= 0",
    ),
    (
        A0 + '      mig-enabled: true\n      mig-devices: {"1g.10gb": 0}\n',
        "mig-configs.a[0].mig-devices",
        "all counts are 0",
    ),
    (
        A0 + '      mig-enabled: true\n      mig-devices: {"big": 1}\n',
        "mig-configs.a[0].mig-devices.big",
        "not a MIG profile name",
    ),
    (
        A0 + "      device-filter: 0xZZ\n      mig-enabled: false\n",
        "mig-configs.a[0].device-filter",
        "not a number",
    ),
    (
        A0 + "      device-filter: 0x233010DE\n      mig-enabled: false\n",
        "mig-configs.a[0].device-filter",
        "quote it",
    ),
    (
        A0 + "      mig-enabled: yes please\n",
        "mig-configs.a[0].mig-enabled",
        "expected true or false",
    ),
]


@pytest.mark.parametrize(("text", "key", "message"), BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_files_name_file_config_entry_and_key(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, source="/etc/mig.yaml")
    assert info.value.source == "/etc/mig.yaml"
    assert info.value.key == key
    assert message in info.value.bare_message
    assert str(info.value).startswith(f"/etc/mig.yaml: {key}: ")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: v1\nmig-configs:\n  a: [\n")
    with pytest.raises(ConfigError, match=r"m.yaml:\d+: malformed YAML"):
        load_file(path)
    with pytest.raises(ConfigError, match="not found"):
        load_file(tmp_path / "missing.yaml")


def test_unknown_config_name_lists_the_valid_ones() -> None:
    f = parse_text(GOOD, source="good.yaml")
    with pytest.raises(ConfigError, match=r"no config named 'all-disable'; did you mean 'all-disabled'\?"):
        f.select("all-disable")
    with pytest.raises(ConfigError, match="choose one with -c NAME"):
        f.select(None)


def _one(devices: str) -> str:
    return (
        f"version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {devices}\n"
    )


def test_validated_against_the_gpus_own_profiles() -> None:
    gpus = [identity(0), identity(1)]
    parse_text(_one('{"1g.10gb": 7}'), source="f").select("c").validate(gpus)
    with pytest.raises(ConfigError) as info:
        parse_text(_one('{"1g.5gb": 7}'), source="f").select("c").validate(gpus)
    assert info.value.key == "mig-configs.c[0].mig-devices.1g.5gb"
    assert "GPU 0 (NVIDIA H100 80GB HBM3) has no MIG profile '1g.5gb'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_text(_one('{"2g.20gb": 4}'), source="f").select("c").validate(gpus)
    assert info.value.key == "mig-configs.c[0].mig-devices.2g.20gb"
    assert "4 exceeds the maximum of 3 2g.20gb" in str(info.value)
    # A GPU without MIG: skipped by `devices: all` (mig-parted's apply/mode.go), refused when named.
    parse_text(_one('{"1g.10gb": 1}'), source="f").select("c").validate([identity(0), identity(1, "l4")])
    named = _one('{"1g.10gb": 1}').replace("devices: all", "devices: [1]")
    with pytest.raises(ConfigError, match="not MIG-capable"):
        parse_text(named, source="f").select("c").validate([identity(0), identity(1, "l4")])


def test_compute_instance_profiles_parse_and_validate() -> None:
    """Issue 23 item 1: ``Nc.Mg.Kgb`` (with ``+me``/``-me``) were refused as "not supported"."""
    gpus = [identity(0)]
    text = _one('{"3c.7g.80gb": 1, "4c.7g.80gb": 1}')
    entry = parse_text(text, source="f").select("c").entries[0]
    assert entry.mig_devices == (("3c.7g.80gb", 1), ("4c.7g.80gb", 1))
    parse_text(text, source="f").select("c").validate(gpus)
    parse_text(_one('{"1c.1g.10gb+me": 1, "1c.3g.40gb": 6}'), source="f").select("c").validate(gpus)
    with pytest.raises(ConfigError) as info:
        parse_text(_one('{"3c.4g.40gb": 1}'), source="f").select("c").validate(gpus)
    assert info.value.key == "mig-configs.c[0].mig-devices.3c.4g.40gb"
    assert "a 4g.40gb GPU instance has no 3-slice compute instance (it has 1c, 2c, 4c)" in str(info.value)
    with pytest.raises(ConfigError, match=r"8 exceeds the maximum of 7 1c\.7g\.80gb"):
        parse_text(_one('{"1c.7g.80gb": 8}'), source="f").select("c").validate(gpus)
    with pytest.raises(ConfigError) as info:
        parse_text(_one('{"2c.1g.10gb": 1}'), source="f")
    assert info.value.key == "mig-configs.c[0].mig-devices.2c.1g.10gb"
    assert "cannot be larger than its GPU instance" in str(info.value)


def test_render_reads_back_the_same() -> None:
    f = parse_text(GOOD, source="good.yaml")
    doc = {
        name: [
            {
                **({"device-filter": [str(d) for d in e.device_filter]} if e.device_filter else {}),
                "devices": "all" if e.devices is None else list(e.devices),
                "mig-enabled": e.mig_enabled,
                **({"mig-devices": dict(e.mig_devices)} if e.mig_enabled else {}),
            }
            for e in entries
        ]
        for name, entries in f.configs.items()
    }
    again = parse_text(render(doc), source="again")
    assert again.configs == {n: tuple(e for e in es) for n, es in f.configs.items()}


def test_name_style_device_filters_are_valid_match_nothing_and_are_warned_about() -> None:
    """mig-parted's own spec tests write ``device-filter: "MODEL"`` and ``"A100-SXM4-40GB"``
    (api/spec/v1/spec_test.go): valid, and since only PCI ids are compared, they match no GPU."""
    text = (
        "version: v1\nmig-configs:\n  c:\n"
        '    - device-filter: "MODEL"\n      devices: all\n      mig-enabled: true\n      mig-devices: {"1g.5gb": 2}\n'
        '    - device-filter: ["A100-SXM4-40GB", "0x233010DE"]\n      devices: [1]\n      mig-enabled: false\n'
    )
    config = parse_text(text, source="/etc/mig.yaml").select("c")
    first, second = config.entries
    assert (first.filter_names, first.device_filter) == (("MODEL",), ())
    assert second.filter_names == ("A100-SXM4-40GB",) and [str(d) for d in second.device_filter] == ["0x233010DE"]
    h100 = [identity(0), identity(1)]
    assert [config.entry_for(g) for g in h100] == [None, second]
    assert config.warnings == (
        "/etc/mig.yaml: mig-configs.c[0].device-filter: 'MODEL' is not a PCI id (e.g. \"0x233010DE\"): it matches "
        "no GPU, as in mig-parted; this entry applies to no GPU",
        "/etc/mig.yaml: mig-configs.c[1].device-filter: 'A100-SXM4-40GB' is not a PCI id (e.g. \"0x233010DE\"): it "
        "matches no GPU, as in mig-parted",
    )
    # A malformed id stays an error (mig-parted would read it as matching nothing, silently).
    for bad in ('"0xZZ"', '"0x233010DE:"', '"233010DEX"'):
        with pytest.raises(ConfigError) as info:
            parse_text(text.replace('"MODEL"', bad), source="/etc/mig.yaml")
        assert info.value.key == "mig-configs.c[0].device-filter"


def test_a_gpu_without_mig_under_devices_all_is_left_alone_by_plan_and_assert() -> None:
    """mig-parted skips a GPU that is not MIG-capable under ``devices: all`` (``cmd/nvidia-mig-parted/apply/
    mode.go``: "Skipping -- non MIG-capable GPU") and fails only when an entry names it; ours failed either way,
    so a node with one L4 beside its H100 could not take `all-1g.10gb`."""
    from nodeagent.mig.planner import applied, plan_node
    from tests.mig.support import state

    config = parse_text(_one('{"1g.10gb": 7}'), source="f").select("c")
    layouts = [state((), enabled=False, index=0), state((), enabled=False, index=1, model="l4")]
    plan = plan_node(config, layouts)
    by_gpu = {p.gpu: p for p in plan.gpus}
    assert by_gpu[1].error == "" and by_gpu[1].steps == ()
    assert by_gpu[0].error == "" and by_gpu[0].steps
    done = [state([("1g.10gb", s) for s in range(7)], index=0), state((), enabled=False, index=1, model="l4")]
    ok, differences = applied(config, done)
    assert ok, differences
