"""The mig subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="mig",
    target="nodeagent.mig.subsystem:MigSubsystem",
    requires=("driver",),
    settings=("mig", "agent", "kubelet", "dra"),  # dra: dynamic MIG owns the layouts
)
