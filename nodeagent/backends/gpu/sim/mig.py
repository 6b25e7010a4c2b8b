"""MIG control of the simulated GPUs, through the worker like the NVML calls it models: a mode change stays
pending until ``reset_gpu``; GPU instances obey the profile's placements (allowed starts, sizes, no overlap,
compute slices, max counts, one ``+me``), their compute instances the compute-instance placements inside
them; a reset drops them."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from nodeagent.backends.gpu.protocols import MigInUse, MigResetUnavailable
from nodeagent.backends.gpu.sim.base import SimBase
from nodeagent.backends.gpu.sim.device import SimGpu
from nodeagent.backends.gpu.sweep import GpuLost, Hop
from nodeagent.errors import ConfigError, MigOperationError
from nodeagent.model.gpu import (
    MigDevice,
)
from nodeagent.model.mig import GpuProcess, count_problem, find_placement, placement_problem
from nodeagent.model.mig_compute import ComputePlacement, compute_problem

log = structlog.get_logger(__name__)


class SimMig(SimBase):
    async def set_mig_mode(self, gpu_index: int, enabled: bool) -> bool:
        """Set the pending MIG mode; returns True when a GPU reset is needed to apply it."""
        return await self._sweeper.call_in_hop("nvmlDeviceSetMigMode", self._set_mig_mode, gpu_index, enabled)

    async def reset_gpu(self, gpu_index: int) -> None:
        """A GPU reset: the pending MIG mode becomes current, GPU instances are gone, a lost or hung GPU
        comes back."""
        await self._sweeper.call("nvmlDeviceReset", self._reset, gpu_index)

    async def create_gpu_instance(
        self, gpu_index: int, profile: str, *, start: int | None = None, compute: Sequence[ComputePlacement] = ()
    ) -> MigDevice:
        """Create a GPU instance at ``start`` or at the lowest free placement, as NVML's automatic placement
        does, and its compute instances: (slices, start) each, checked by the compute-instance placement
        rules, or one on all of it. Returns the first compute instance's MIG device."""
        return await self._sweeper.call_in_hop(
            "nvmlDeviceCreateGpuInstance", self._create, gpu_index, profile, start, tuple(compute)
        )

    async def destroy_gpu_instance(self, gpu_index: int, gpu_instance_id: int) -> None:
        await self._sweeper.call_in_hop("nvmlGpuInstanceDestroy", self._destroy, gpu_index, gpu_instance_id)

    async def gpu_processes(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        """The injected holders of this GPU (``set_holders``), as NVML's process lists would show them."""
        return await self._sweeper.call_in_hop("nvmlDeviceGetComputeRunningProcesses", self._processes, gpu_index)

    def _mig_gpu(self, hop: Hop, gpu_index: int) -> SimGpu:
        g = self._gpu(gpu_index)
        try:
            self._gate(g, hop)
        except GpuLost as err:
            raise MigOperationError(f"GPU {gpu_index}: {err.reason}") from None
        if not self.profile.mig_capable:
            raise MigOperationError(f"GPU {gpu_index} ({self.profile.name}) is not MIG-capable")
        return g

    def _set_mig_mode(self, hop: Hop, gpu_index: int, enabled: bool) -> bool:
        g = self._mig_gpu(hop, gpu_index)
        if not enabled and g.instances:
            raise MigOperationError(f"GPU {gpu_index}: destroy its {len(g.instances)} GPU instance(s) first (in use)")
        g.mig_pending = enabled
        self._save()
        log.info("sim_mig_mode_set", gpu=gpu_index, pending=enabled, current=g.mig_enabled)
        return g.mig_pending != g.mig_enabled

    def _reset(self, gpu_index: int) -> None:
        g = self._gpu(gpu_index)
        if self._reset_blocker is not None:
            kind, reason = self._reset_blocker
            why = f": {reason}" if reason else ""
            if kind == "reboot":
                raise MigResetUnavailable(f"GPU {gpu_index}: cannot be reset here (NVML_ERROR_RESET_REQUIRED){why}")
            raise MigInUse(f"GPU {gpu_index}: reset refused: in use by another client{why}")
        g.mig_enabled = g.mig_pending
        g.instances.clear()
        g.lost = False
        g.hung_until = 0.0
        g.gpm_primed = False
        self._sweeper.health.clear(gpu_index)
        self._save()
        log.info("sim_gpu_reset", gpu=gpu_index, mig_enabled=g.mig_enabled)

    def _create(
        self, hop: Hop, gpu_index: int, profile: str, start: int | None, compute: tuple[ComputePlacement, ...]
    ) -> MigDevice:
        g = self._mig_gpu(hop, gpu_index)
        if not g.mig_enabled:
            hint = " (it is pending: reset the GPU to apply it)" if g.mig_pending else ""
            raise MigOperationError(f"GPU {gpu_index}: MIG mode is not enabled{hint}")
        try:
            mp = self.profile.mig_profile(profile)
        except ConfigError as err:
            raise MigOperationError(err.bare_message) from None
        p = self.profile
        problem = compute_problem(mp, compute)
        if problem:
            raise MigOperationError(f"GPU {gpu_index}: {problem} (nvmlGpuInstanceCreateComputeInstanceWithPlacement)")
        if start is None:
            problem = count_problem(mp, g.placed())
            if problem:
                raise MigOperationError(f"GPU {gpu_index}: {problem}")
            found = find_placement(
                [mp], g.placed(), memory_slices=p.mig_memory_slices, compute_slices=p.mig_compute_slices
            )
            if found is None:
                raise MigOperationError(f"GPU {gpu_index}: no free placement for {mp.name} (insufficient resources)")
            start = found[0]
        else:
            problem = placement_problem(
                mp, start, g.placed(), memory_slices=p.mig_memory_slices, compute_slices=p.mig_compute_slices
            )
            if problem:
                raise MigOperationError(f"GPU {gpu_index}: {problem}")
        inst = g.add_instance(mp, start, compute=compute)
        self._save()
        log.info(
            "sim_gpu_instance_created",
            gpu=gpu_index,
            profile=mp.name,
            gi=inst.gi,
            start=start,
            compute=[inst.compute_name(c) for c in inst.computes],
        )
        return next(d for d in g.mig_devices() if d.gpu_instance_id == inst.gi)

    def _destroy(self, hop: Hop, gpu_index: int, gpu_instance_id: int) -> None:
        g = self._mig_gpu(hop, gpu_index)
        if g.instances.pop(gpu_instance_id, None) is None:
            have = ", ".join(str(gi) for gi in sorted(g.instances)) or "none"
            raise MigOperationError(f"GPU {gpu_index}: no GPU instance {gpu_instance_id} (existing: {have})")
        self._save()
        log.info("sim_gpu_instance_destroyed", gpu=gpu_index, gi=gpu_instance_id)

    def _processes(self, hop: Hop, gpu_index: int) -> tuple[GpuProcess, ...]:
        return self._mig_gpu(hop, gpu_index).holders
