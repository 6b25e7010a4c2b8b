"""The labels subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="labels",
    target="nodeagent.labels.subsystem:LabelsSubsystem",
    requires=("driver",),
    settings=("labels", "kube", "runtime", "deviceplugin"),  # deviceplugin: the sharing labels follow its time-slicing
)
