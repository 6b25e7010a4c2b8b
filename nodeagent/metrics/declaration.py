"""The metrics subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="metrics",
    target="nodeagent.metrics.subsystem:MetricsSubsystem",
    requires=("driver",),
    settings=("metrics", "agent", "kubelet"),
)
