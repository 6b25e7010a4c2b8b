"""The protocols behind which NVML and the simulator live: reading GPUs, and changing their MIG layout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from nodeagent.errors import MigOperationError
from nodeagent.model.gpu import Inventory, MigDevice, Sample, SampleRequest, XidEvent
from nodeagent.model.mig import GpuProcess
from nodeagent.model.mig_compute import ComputePlacement


class MigResetUnavailable(MigOperationError):
    """The GPU cannot be reset here (NVML_ERROR_RESET_REQUIRED: passthrough VMs and the like); only a reboot
    makes the pending MIG mode current."""


class MigInUse(MigOperationError):
    """The GPU (or the instance) is in use by another client (NVML_ERROR_IN_USE)."""


@runtime_checkable
class GpuBackend(Protocol):
    """The one protocol behind which NVML and the simulator live.

    Every method is a coroutine that does its blocking work off the event loop (the NVML backend on one
    dedicated worker thread, each call with a timeout). A hung or failing call marks that GPU degraded
    in ``Sample.health`` / ``GpuInfo.health``; it never raises out of ``sample``.
    """

    kind: str

    async def open(self) -> None:
        """Load and initialise the library. Raises BackendUnavailable with a clear reason."""

    async def close(self) -> None:
        """Shut down; idempotent."""

    async def inventory(self) -> Inventory:
        """Static facts of every GPU and MIG device (one hop)."""

    async def sample(self, request: SampleRequest) -> Sample:
        """Read the requested values of every GPU (and MIG device) in one hop."""


XidSink = Callable[[XidEvent], None]


@runtime_checkable
class EventSource(Protocol):
    """A backend that pushes XIDs as they happen (NVML's event wait; the simulator's injection)."""

    def watch_events(self, sink: XidSink) -> Callable[[], None]:
        """From now on call ``sink`` on the calling event loop with each XID as it happens (no longer in
        ``Sample.xids``). Returns the call that stops watching; closing the backend stops it too."""
        ...


class Sampler(Protocol):
    """Anything a metrics sweep can read from: a GPU backend, or the GPU-state owner in front of it."""

    async def sample(self, request: SampleRequest) -> Sample: ...


@runtime_checkable
class MigControl(Protocol):
    """Changing a GPU's MIG layout. Every call runs on the backend's worker thread with a timeout and raises
    ``MigOperationError`` (nodeagent.errors) with NVML's reason when the driver refuses."""

    async def set_mig_mode(self, gpu_index: int, enabled: bool) -> bool:
        """Set the pending MIG mode; True when a GPU reset is needed for it to take effect."""

    async def reset_gpu(self, gpu_index: int) -> None:
        """Reset the GPU so a pending MIG mode becomes current."""

    async def create_gpu_instance(
        self, gpu_index: int, profile: str, *, start: int | None = None, compute: Sequence[ComputePlacement] = ()
    ) -> MigDevice:
        """Create a GPU instance of ``profile`` (at placement ``start`` when given) and its compute instances:
        one per (slices, start) of ``compute`` (e.g. ``((4, 0), (3, 4))`` for a 4c and a 3c), or one spanning it
        when ``compute`` is empty. The GPU instance is destroyed again when a compute instance cannot be made.
        Returns the MIG device of its first compute instance."""

    async def destroy_gpu_instance(self, gpu_index: int, gpu_instance_id: int) -> None:
        """Destroy the GPU instance (and its compute instances)."""

    async def gpu_processes(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        """Processes running on the GPU or its instances (NVML's compute and graphics process lists)."""
