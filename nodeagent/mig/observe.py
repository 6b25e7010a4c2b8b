"""From a GPU inventory to what the MIG config matcher and the planner take. Pure."""

from __future__ import annotations

from nodeagent.mig.config import DeviceId, GpuIdentity
from nodeagent.mig.planner import GpuMigLayout, instances_of
from nodeagent.model.gpu import GpuInfo, Inventory
from nodeagent.model.mig import MigTable


def identity(gpu: GpuInfo, inventory: Inventory) -> GpuIdentity:
    table = MigTable.from_profiles(inventory.mig_profiles.get(gpu.name, ()))
    return GpuIdentity(
        index=gpu.index,
        name=gpu.name,
        device_id=DeviceId.of_gpu(gpu.pci_device_id, gpu.pci_subsystem_id),
        mig_capable=gpu.mig_capable and bool(table.profiles),
        table=table,
        uuid=gpu.uuid,
    )


def mig_layouts(inventory: Inventory) -> list[GpuMigLayout]:
    """Every GPU's identity, MIG mode and GPU instances."""
    return [
        GpuMigLayout(
            gpu=identity(g, inventory),
            mig_enabled=g.mig_enabled,
            mig_pending=g.mig_pending,
            instances=instances_of(g.mig_devices),
        )
        for g in sorted(inventory.gpus, key=lambda g: g.index)
    ]
