"""The cdi subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="cdi",
    target="nodeagent.cdi.subsystem:CdiSubsystem",
    requires=("driver",),
    settings=("cdi", "driver", "watch"),
)
