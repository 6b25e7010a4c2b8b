"""SimGpuBackend: stateful fake GPUs from a profile, a count and a seed (the GpuBackend, MigControl and
EventSource protocols, as the NVML backend implements them).

Where each part lives: one GPU's identity and physics in ``device``; the shared state in ``base``; MIG control
in ``mig``; fault injection in ``faults``; the persisted MIG state in ``persistence``; inventory and sampling
here. All work happens on a watched worker thread with the per-call timeout, one hop per sweep, through the
same GpuSweeper as the NVML backend, so a hung simulated GPU is handled exactly like a hung real one.
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from nodeagent.backends.gpu.sim import topology
from nodeagent.backends.gpu.sim.device import MIG_GPM, SimGpu
from nodeagent.backends.gpu.sim.faults import XID_FALLEN_OFF_BUS, SimFaults
from nodeagent.backends.gpu.sim.mig import SimMig
from nodeagent.backends.gpu.sim.persistence import STATE_FORMAT, SimPersistence
from nodeagent.backends.gpu.sweep import Hop, to_sample
from nodeagent.backends.gpu.sweep import wanted_gpus as _wanted
from nodeagent.model.gpu import (
    GPM_READINGS,
    MIG_READINGS,
    GpuHealthState,
    GpuInfo,
    Inventory,
    MigKey,
    Reading,
    Sample,
    SampleRequest,
    XidEvent,
)

log = structlog.get_logger(__name__)

__all__ = ["STATE_FORMAT", "XID_FALLEN_OFF_BUS", "SimGpuBackend"]


class SimGpuBackend(SimFaults, SimMig, SimPersistence):
    """GpuBackend over simulated GPUs. ``profile`` is a GpuProfile, a built-in name or a JSON path."""

    kind = "sim"

    async def open(self) -> None:
        self._closed = False
        log.info("sim_gpus_opened", profile=self.profile.key, name=self.profile.name, count=self.count, seed=self.seed)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._xid_sink = None
        self._release.set()  # wake any simulated hang so its thread ends
        self._sweeper.shutdown()

    async def inventory(self) -> Inventory:
        result = await self._sweeper.sweep(range(self.count), self._info_call, name="inventory")
        gpus = []
        for g in self._gpus:
            info = result.results.get(g.index) or self._info(g)
            state = self._sweeper.health.state(g.index)
            if state != GpuHealthState.OK:
                info = replace(info, health=state, health_reason=self._sweeper.health.reason(g.index))
            gpus.append(info)
        p = self.profile
        return Inventory(
            backend="sim",
            driver_version=p.driver_version,
            nvml_version=p.nvml_version,
            cuda_driver_version=p.cuda_driver_version,
            gpus=tuple(gpus),
            mig_profiles={p.name: p.mig_profiles} if p.mig_capable else {},
        )

    async def sample(self, request: SampleRequest) -> Sample:
        taken_at = self._clock()
        readings = request.readings
        include_mig = request.include_mig

        def per_gpu(hop: Hop, index: int) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
            return hop.call("sim_read_gpu", self._read, hop, self._gpus[index], readings, include_mig, taken_at)

        result = await self._sweeper.sweep(_wanted(self.count, request), per_gpu, tail=self._drain_xids, name="sample")
        indexes = [g.index for g in self._gpus]
        return to_sample(result, taken_at=taken_at, health=self._sweeper.health, gpus=indexes, request=request)

    def _info_call(self, hop: Hop, index: int) -> GpuInfo:
        g = self._gpus[index]
        return hop.call("sim_device_info", self._gated_info, hop, g)

    def _gated_info(self, hop: Hop, g: SimGpu) -> GpuInfo:
        self._gate(g, hop)
        return self._info(g)

    def _info(self, g: SimGpu) -> GpuInfo:
        p = self.profile
        return GpuInfo(
            index=g.index,
            uuid=g.uuid,
            name=p.name,
            pci_bus_id=g.bus_id,
            pci_device_id=p.pci_device_id,
            pci_subsystem_id=p.pci_subsystem_id,
            minor_number=g.minor,
            memory_total_mib=p.memory_total_mib,
            compute_capability=p.compute_capability,
            architecture=p.architecture,
            brand=p.brand,
            serial=g.serial,
            vbios_version=p.vbios_version,
            mig_capable=p.mig_capable,
            mig_enabled=g.mig_enabled,
            mig_pending=g.mig_pending,
            mig_devices=g.mig_devices(),
            gpm_supported=p.gpm_supported,
            numa_node=topology.numa_node(g.index, self.count),
            links=topology.links(g.index, self.count, p.nvlink_links),
        )

    def _read(
        self, hop: Hop, g: SimGpu, readings: frozenset[Reading], include_mig: bool, now: float
    ) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
        self._gate(g, hop)
        g.step(now)
        ns = g.not_supported()
        want = readings - ns
        if not g.profile.gpm_supported:
            want = want - GPM_READINGS  # as NVML without GPM (before Hopper): no profiling readings at all
        if want & GPM_READINGS and not g.gpm_primed:
            g.gpm_primed = True  # GPM needs two samples: the first sweep has none, as with NVML
            want = want - GPM_READINGS
        values = g.values()
        if Reading.NVLINK_BANDWIDTH_TOTAL in want:
            values[Reading.NVLINK_BANDWIDTH_TOTAL] = g.nvlink_rate()
        out = {r: values[r] for r in want}
        mig: dict[MigKey, dict[Reading, float]] = {}
        if include_mig and g.mig_enabled and g.instances:
            mig_want = readings & MIG_READINGS - g.profile.not_supported - g.extra_not_supported
            if not g.profile.gpm_supported:
                mig_want = mig_want - GPM_READINGS
            for inst in g.instances.values():
                w = mig_want
                if w & MIG_GPM and not inst.gpm_primed:
                    inst.gpm_primed = True
                    w = w - MIG_GPM
                iv = g.instance_values(inst)
                mig[(g.index, inst.gi)] = iv if w == MIG_READINGS else {r: iv[r] for r in w}
        return out, mig

    def _drain_xids(self, hop: Hop) -> list[XidEvent]:
        def drain() -> list[XidEvent]:
            events = []
            while self._xids:
                events.append(self._xids.popleft())
            return events

        return hop.call("sim_event_wait", drain)
