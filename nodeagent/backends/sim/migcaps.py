"""The simulated driver's side of MIG in the sandbox: a ``MigControl`` over the simulator that, after each change
to the GPUs' instances, lays out what the real driver and nvidia-modprobe would (the instances' entries under
/proc/driver/nvidia/capabilities and their /dev/nvidia-caps nodes, ``sandbox.sync_mig_capabilities``), so the
driver, CDI and the labels see a node as after ``nvidia-smi mig -cgi ... -C``."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence
from typing import Any

import structlog

from nodeagent.aio import run_blocking
from nodeagent.backends.gpu.protocols import GpuBackend, MigControl
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim.sandbox import sync_mig_capabilities
from nodeagent.errors import NodeAgentError
from nodeagent.model.gpu import MigDevice
from nodeagent.model.mig import GpuProcess
from nodeagent.model.mig_compute import ComputePlacement

log = structlog.get_logger(__name__)


class SandboxMigControl:
    """``MigControl`` of the simulator (``inner``), keeping the sandbox's MIG capabilities in step with it."""

    def __init__(self, inner: MigControl, gpus: GpuBackend, root: Root) -> None:
        self.inner = inner
        self.gpus = gpus
        self.root = root

    async def set_mig_mode(self, gpu_index: int, enabled: bool) -> bool:
        return await self.inner.set_mig_mode(gpu_index, enabled)

    async def reset_gpu(self, gpu_index: int) -> None:
        try:
            await self.inner.reset_gpu(gpu_index)
        finally:
            await self.sync()

    async def create_gpu_instance(
        self, gpu_index: int, profile: str, *, start: int | None = None, compute: Sequence[ComputePlacement] = ()
    ) -> MigDevice:
        try:
            return await self.inner.create_gpu_instance(gpu_index, profile, start=start, compute=compute)
        finally:
            await self.sync()

    async def destroy_gpu_instance(self, gpu_index: int, gpu_instance_id: int) -> None:
        try:
            await self.inner.destroy_gpu_instance(gpu_index, gpu_instance_id)
        finally:
            await self.sync()

    async def gpu_processes(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        return await self.inner.gpu_processes(gpu_index)

    def __getattr__(self, name: str) -> Any:
        """Any other call of the simulator's MIG control (one added later) goes through, followed by a sync."""
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = attr(*args, **kwargs)
                return await result if isinstance(result, Awaitable) else result
            finally:
                await self.sync()

        return call

    async def sync(self) -> None:
        """Lay out the MIG capabilities of the instances the simulator has now."""
        try:
            inventory = await self.gpus.inventory()
            changed = await run_blocking(sync_mig_capabilities, self.root, inventory)
        except (NodeAgentError, OSError) as err:
            log.warning("sim_mig_capabilities_not_synced", error=str(err))
            return
        if changed:
            log.debug("sim_mig_capabilities_synced", paths=len(changed))


def sandbox_mig_control(control: MigControl | None, gpus: GpuBackend, root: Root) -> MigControl | None:
    """The simulator's MIG control, wrapped so the sandbox follows it (None stays None)."""
    return None if control is None else SandboxMigControl(control, gpus, root)
