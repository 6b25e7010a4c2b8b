"""generate-config and export, as nvidia-mig-parted 0.15 writes them."""

from __future__ import annotations

import json

from nodeagent.mig.config import parse_text
from nodeagent.mig.generate import export, generate, to_text
from nodeagent.mig.planner import applied, plan_node
from tests.mig.support import identity, state

H100_NODE = [identity(i) for i in range(8)]


def test_generated_h100_configs() -> None:
    configs = generate(H100_NODE)
    assert list(configs) == [
        "all-1g.10gb",
        "all-1g.10gb.me",
        "all-1g.20gb",
        "all-2g.20gb",
        "all-3g.40gb",
        "all-4g.40gb",
        "all-7g.80gb",
        "all-balanced",
        "all-disabled",
        "all-enabled",
    ]
    assert configs["all-balanced"] == [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}}
    ]
    assert configs["all-1g.10gb.me"] == [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb+me": 1}}]
    assert configs["all-2g.20gb"][0]["mig-devices"] == {"2g.20gb": 3}
    text = to_text(configs)
    assert text.startswith("version: v1\nmig-configs:\n  all-1g.10gb:\n    - devices: all\n      mig-enabled: true\n")
    assert '        "1g.10gb+me": 1\n' in text
    parsed = parse_text(text, source="generated")
    assert sorted(parsed.configs) == sorted(configs)
    assert json.loads(to_text(configs, "json"))["mig-configs"] == configs


def test_every_generated_config_plans_on_an_empty_node() -> None:
    f = parse_text(to_text(generate(H100_NODE)), source="generated")
    states = [state((), enabled=False, index=i) for i in range(8)]
    for name in f.configs:
        config = f.select(name)
        config.validate(H100_NODE)
        plan = plan_node(config, states)
        assert not plan.errors, (name, plan.errors)


def test_balanced_for_other_models() -> None:
    a100_40 = generate([identity(0, "a100-sxm4-40gb")])
    assert a100_40["all-balanced"][0]["mig-devices"] == {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
    assert a100_40["all-1g.10gb"][0]["mig-devices"] == {"1g.10gb": 4}
    h200 = generate([identity(0, "h200-141gb-hbm3e")])
    assert h200["all-balanced"][0]["mig-devices"] == {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}
    assert "all-1g.18gb.me" in h200 and "all-7g.141gb" in h200
    assert generate([identity(0, "l4")]) == {
        "all-disabled": [{"devices": "all", "mig-enabled": False, "mig-devices": {}}],
        "all-enabled": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}],
    }


def test_mixed_node_gets_device_filters() -> None:
    gpus = [identity(0), identity(1, "a100-sxm4-40gb")]
    configs = generate(gpus)
    assert configs["all-1g.10gb"] == [
        {"device-filter": ["0x20B010DE"], "devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 4}},
        {"device-filter": ["0x233010DE"], "devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
    ]
    assert [e["device-filter"] for e in configs["all-balanced"]] == [["0x20B010DE"], ["0x233010DE"]]
    f = parse_text(to_text(configs), source="generated")
    config = f.select("all-1g.10gb")
    assert [config.entry_for(g).wanted for g in gpus] == [{"1g.10gb": 7}, {"1g.10gb": 4}]  # type: ignore[union-attr]


def test_export_merges_like_mig_parted_and_asserts_as_current() -> None:
    layout = [("3g.40gb", 4), ("2g.20gb", 0), ("2g.20gb", 2)]
    states = [state(layout, index=i) for i in range(6)] + [state((), enabled=False, index=i) for i in (6, 7)]
    configs = export(states)
    assert configs == {
        "current": [
            {"devices": [0, 1, 2, 3, 4, 5], "mig-enabled": True, "mig-devices": {"2g.20gb": 2, "3g.40gb": 1}},
            {"devices": [6, 7], "mig-enabled": False, "mig-devices": {}},
        ]
    }
    f = parse_text(to_text(configs), source="exported")
    ok, differences = applied(f.select("current"), states)
    assert ok, differences
    same = [state(layout, index=i) for i in range(8)]
    assert export(same, "snapshot") == {
        "snapshot": [{"devices": "all", "mig-enabled": True, "mig-devices": {"2g.20gb": 2, "3g.40gb": 1}}]
    }
    mixed = [state(layout, index=0), state(layout, index=1, model="a100-sxm4-80gb")]
    assert export(mixed)["current"] == [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"2g.20gb": 2, "3g.40gb": 1}}
    ]
    mixed.append(state((), enabled=False, index=2, model="a100-sxm4-80gb"))
    assert export(mixed)["current"] == [
        {
            "device-filter": ["0x20B210DE", "0x233010DE"],
            "devices": [0, 1],
            "mig-enabled": True,
            "mig-devices": {"2g.20gb": 2, "3g.40gb": 1},
        },
        {"device-filter": "0x20B210DE", "devices": [2], "mig-enabled": False, "mig-devices": {}},
    ]
    f = parse_text(to_text(export(mixed)), source="exported")
    assert applied(f.select("current"), mixed)[0]
