"""The dra subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="dra",
    target="nodeagent.dra.subsystem:DraSubsystem",
    requires=("driver", "cdi"),
    settings=("dra", "kubelet", "cdi", "watch", "gpuhealth"),
)
