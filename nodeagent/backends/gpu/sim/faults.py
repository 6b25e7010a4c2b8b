"""Fault injection into the simulated GPUs (callable from the loop at any time): XIDs, a lost GPU, hung calls,
a pinned workload, NotSupported readings, processes holding a GPU, failing resets, a node reboot. The HTTP
routes for them are in ``debug``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import replace

from nodeagent.backends.gpu.sim.base import SimBase
from nodeagent.model.gpu import (
    Reading,
    XidEvent,
)
from nodeagent.model.mig import GpuProcess

XID_FALLEN_OFF_BUS = 79


class SimFaults(SimBase):
    def inject_xid(
        self, gpu_index: int, xid: int, *, gpu_instance_id: int | None = None, compute_instance_id: int | None = None
    ) -> None:
        """An XID error on a GPU (or one of its MIG instances): pushed to the watcher at once, or, when
        nobody watches, in the next Sample.xids."""
        g = self._gpu(gpu_index)
        (self._xid_sink or self._xids.append)(
            XidEvent(
                gpu_index=gpu_index,
                gpu_uuid=g.uuid,
                xid=xid,
                timestamp=self._clock(),
                gpu_instance_id=gpu_instance_id,
                compute_instance_id=compute_instance_id,
            )
        )

    def watch_events(self, sink: Callable[[XidEvent], None]) -> Callable[[], None]:
        """Injected XIDs go to ``sink`` on this loop at once (the simulator's stand-in for NVML's event wait)."""
        loop = asyncio.get_running_loop()

        def push(event: XidEvent) -> None:
            loop.call_soon_threadsafe(sink, event)

        self._xid_sink = push
        while self._xids:  # injected before anyone watched
            push(self._xids.popleft())

        def unwatch() -> None:
            if self._xid_sink is push:
                self._xid_sink = None

        return unwatch

    def lose_gpu(self, gpu_index: int) -> None:
        """The GPU falls off the bus: XID 79, then every call fails with GPU is lost (health LOST)."""
        g = self._gpu(gpu_index)
        if not g.lost:
            g.lost = True
            self.inject_xid(gpu_index, XID_FALLEN_OFF_BUS)

    def hang_calls(self, gpu_index: int, seconds: float) -> None:
        """Calls for this GPU block the worker thread until ``seconds`` from now (0 ends the hang)."""
        self._gpu(gpu_index).hung_until = self._monotonic() + seconds if seconds > 0 else 0.0

    def set_workload(self, gpu_index: int, utilization_pct: float | None) -> None:
        """Pin a GPU's (or, in MIG mode, each of its instances') utilization target; None resumes the
        random idle/inference/training phases. Power, temperature, clocks and FB use follow."""
        g = self._gpu(gpu_index)
        g.work.pin(utilization_pct)
        for inst in g.instances.values():
            inst.work.pin(utilization_pct)

    def set_not_supported(self, readings: Iterable[Reading], *, gpu_index: int | None = None) -> None:
        """Make these readings NotSupported (absent) on one GPU or on all."""
        extra = frozenset(Reading(r) for r in readings)
        for g in self._gpus if gpu_index is None else [self._gpu(gpu_index)]:
            g.extra_not_supported = g.extra_not_supported | extra

    def set_holders(self, gpu_index: int, processes: Iterable[GpuProcess]) -> None:
        """Processes that use this GPU from now on (empty: none). They block nothing in the simulator itself;
        the MIG executor finds them and refuses destructive steps without --force."""
        g = self._gpu(gpu_index)
        g.holders = tuple(replace(p, gpu_index=gpu_index) for p in processes)
        self._save()

    def block_reset(self, kind: str | None, reason: str = "") -> None:
        """Make GPU resets fail: ``reboot`` as in a passthrough VM (NVML_ERROR_RESET_REQUIRED), ``in-use`` as
        when nvidia_drm or another client holds the GPU; None lets resets work again."""
        if kind not in (None, "reboot", "in-use"):
            raise ValueError(f"unknown reset blocker {kind!r}; expected reboot or in-use")
        self._reset_blocker = None if kind is None else (kind, reason)

    def reboot(self) -> None:
        """What a node reboot does to the GPUs: pending MIG modes become current, every instance is gone
        (the MIG mode itself survives), holders and reset blockers are gone."""
        for g in self._gpus:
            g.mig_enabled = g.mig_pending
            g.instances.clear()
            g.holders = ()
        self._reset_blocker = None
        self._save()
