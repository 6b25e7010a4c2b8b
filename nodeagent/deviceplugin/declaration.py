"""The deviceplugin subsystem's declaration: the one place the agent learns about it (see nodeagent.subsystem_table)."""

from __future__ import annotations

from nodeagent.subsystem import Declaration

DECLARATION = Declaration(
    name="deviceplugin",
    target="nodeagent.deviceplugin.subsystem:DevicePluginSubsystem",
    requires=("driver",),
    settings=("deviceplugin", "labels", "gpuhealth", "kubelet", "cdi", "watch", "dra"),
)
