"""The runtime subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="runtime",
    target="nodeagent.runtime.subsystem:RuntimeSubsystem",
    requires=("driver",),
    needs_gpu=False,
    settings=("runtime", "watch"),
)
