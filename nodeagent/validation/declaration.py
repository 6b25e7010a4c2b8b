"""The validation subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="validation",
    target="nodeagent.validation.subsystem:ValidationSubsystem",
    requires=(),
    needs_gpu=False,
    companion_of=("driver", "runtime", "mig"),
    settings=("driver", "cdi", "watch"),
)
