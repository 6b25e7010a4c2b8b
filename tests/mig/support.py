"""Helpers for the MIG tests: GPU identities and states built from the built-in GPU models."""

from __future__ import annotations

from collections.abc import Iterable

from nodeagent.backends.gpu.sim.profiles import load_profile
from nodeagent.mig.config import DeviceId, GpuIdentity
from nodeagent.mig.planner import GpuMigLayout, Instance
from nodeagent.model.mig import MigTable, gpu_instance_id

H100 = load_profile("h100-80gb-hbm3")
H100_TABLE = MigTable(H100.mig_profiles, H100.mig_memory_slices, H100.mig_compute_slices)


def identity(index: int = 0, model: str = "h100-80gb-hbm3") -> GpuIdentity:
    p = load_profile(model)
    return GpuIdentity(
        index=index,
        name=p.name,
        device_id=DeviceId.of_gpu(p.pci_device_id, p.pci_subsystem_id),
        mig_capable=p.mig_capable,
        table=MigTable(p.mig_profiles, p.mig_memory_slices, p.mig_compute_slices),
    )


def state(
    layout: Iterable[tuple[str, int]] = (), *, enabled: bool = True, index: int = 0, model: str = "h100-80gb-hbm3"
) -> GpuMigLayout:
    """A GPU with MIG ``enabled`` and instances (profile, start)."""
    gpu = identity(index, model)
    instances = []
    for name, start in layout:
        profile = gpu.table.profile(name)
        assert profile is not None
        gi = gpu_instance_id(start, profile.slices)
        instances.append(Instance(gi, name, start, f"MIG-{index}-{gi}"))
    return GpuMigLayout(gpu, enabled, enabled, tuple(instances))
