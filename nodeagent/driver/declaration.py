"""The driver subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="driver",
    target="nodeagent.driver.subsystem:DriverSubsystem",
    requires=(),
    settings=("driver", "cdi"),
)
