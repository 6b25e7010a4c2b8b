"""The explicit subsystem list: dependency order, --only, cycles."""

from __future__ import annotations

import pytest

from nodeagent import subsystem_table
from nodeagent.errors import ConfigError
from nodeagent.settings import load, replace
from nodeagent.subsystem_table import Entry, dependency_order


def names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


def test_dependencies_come_first_whatever_the_listing_order() -> None:
    entries = [
        Entry("metrics", "x:y", ("driver",)),
        Entry("cdi", "x:y", ("driver", "runtime")),
        Entry("runtime", "x:y", ("driver",)),
        Entry("driver", "x:y", ()),
    ]
    order = names(dependency_order(entries))
    assert order.index("driver") < order.index("runtime") < order.index("cdi")
    assert order.index("driver") < order.index("metrics")


def test_cycle_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="dependency cycle"):
        dependency_order([Entry("a", "x:y", ("b",)), Entry("b", "x:y", ("a",))])


def test_only_restricts_and_unknown_names_are_rejected() -> None:
    s = load()
    assert names(subsystem_table.enabled(s, ["cdi"])) == ["cdi"]
    # the validation files follow the subsystems whose state they report
    assert names(subsystem_table.enabled(s, ["runtime"])) == ["runtime", "validation"]
    assert names(subsystem_table.enabled(s, ["metrics"])) == ["metrics"]
    with pytest.raises(ConfigError, match="unknown subsystem 'runtim'"):
        subsystem_table.enabled(s, ["runtim"])


def test_disabled_subsystems_are_left_out() -> None:
    s = replace(load(), "metrics", enabled=False)
    assert "metrics" not in names(subsystem_table.enabled(s))
    assert names(subsystem_table.enabled(load()))[0] == "driver"


def test_agent_only_in_the_settings_restricts_like_the_flag() -> None:
    s = replace(load(), "agent", only=["driver"])
    # the validation files follow the driver; a flag given on top wins over the setting
    assert names(subsystem_table.enabled(s)) == ["driver", "validation"]
    assert names(subsystem_table.enabled(s, ["gpuhealth"])) == ["gpuhealth"]
