"""NVML backend (nvidia-ml-py, module ``pynvml``): inventory and readings of real GPUs.

Every NVML call runs on one dedicated worker thread (GpuSweeper: one hop per ``inventory()`` and per
``sample()``), each with the per-call timeout of ``gpu.call_timeout_s``. NotSupported makes a reading
absent (and is remembered per GPU until the next inventory, so it is not asked again every sweep); "GPU is
lost" makes the GPU LOST; a hung call makes it DEGRADED and skipped for a backoff period; other errors are
counted per call name in ``Sample.failures``. Library not found, driver not loaded and driver/library
version mismatch become BackendUnavailable with what to do about it.

pynvml is imported lazily and can be replaced by any module-like object with the same names (tests inject
a fake NVML surface at exactly this boundary). With a driver root, libnvidia-ml.so.1 is loaded from there.
"""

from __future__ import annotations

from typing import Any

from nodeagent.backends.gpu.nvml.events import NvmlEvents
from nodeagent.backends.gpu.nvml.gpm import NvmlGpm
from nodeagent.backends.gpu.nvml.inventory import NvmlInventory
from nodeagent.backends.gpu.nvml.lifecycle import NvmlLifecycle
from nodeagent.backends.gpu.nvml.readers import MIB, MIG_FB, MIG_GPM, READERS, Calls, MigState, NvmlDevice
from nodeagent.backends.gpu.sweep import Hop, to_sample
from nodeagent.backends.gpu.sweep import wanted_gpus as _wanted
from nodeagent.model.gpu import GPM_READINGS, MIG_READINGS, MigKey, Reading, Sample, SampleRequest


class NvmlBackend(NvmlLifecycle, NvmlInventory, NvmlGpm, NvmlEvents):
    """GpuBackend over NVML: lifecycle, inventory, GPM and events come from their mixins; sampling is here."""

    kind = "nvml"

    async def sample(self, request: SampleRequest) -> Sample:
        taken_at = self._clock()
        readings, include_mig = request.readings, request.include_mig

        def per_gpu(hop: Hop, index: int) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
            return self.read_gpu(hop, index, readings, include_mig)

        result = await self._sweeper.sweep(
            _wanted(len(self._gpus), request), per_gpu, tail=self._sample_tail(), name="sample"
        )
        indexes = [g.index for g in self._gpus]
        return to_sample(result, taken_at=taken_at, health=self._sweeper.health, gpus=indexes, request=request)

    def read_gpu(
        self, hop: Hop, index: int, readings: frozenset[Reading], include_mig: bool
    ) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
        """Every requested reading of one GPU (and its MIG devices). Raises GpuLost / GpuUnreadable."""
        nv = self.nv
        g = self._gpus[index]
        c = Calls(self, hop, g.unsupported, g)
        h = self._handle(c, g)
        want = readings - g.unsupported
        out: dict[Reading, float] = {}
        for covers, reader in READERS:
            if covers & want:
                reader(c, nv, h, want, out)
        gpm_want = want & GPM_READINGS
        if gpm_want and g.gpm_supported:
            values = self._gpm_metrics(
                c, gpm=g.gpm, get_name="nvmlGpmSampleGet", get=nv.nvmlGpmSampleGet, args=(h,), want=gpm_want
            )
            out.update(values)
        elif gpm_want:
            g.unsupported.update(GPM_READINGS)
        mig: dict[MigKey, dict[Reading, float]] = {}
        if include_mig and g.mig:
            mig_want = readings & MIG_READINGS
            for m in g.mig.values():
                mig[(index, m.gi)] = self._read_mig(hop, g, h, m, mig_want - m.unsupported)
        return out, mig

    def _read_mig(self, hop: Hop, g: NvmlDevice, h: Any, m: MigState, want: frozenset[Reading]) -> dict[Reading, float]:
        nv = self.nv
        c = Calls(self, hop, m.unsupported)
        out: dict[Reading, float] = {}
        if want & MIG_FB:
            # Memory info v2 on the MIG device, as DCGM reads FB_RESERVED of a GPU instance; v1 without it.
            v2 = getattr(nv, "nvmlMemory_v2", None)
            mem = None
            if v2 is not None and not g.mem_v1_only and Reading.FB_RESERVED_MIB in want:
                probe: set[Reading] = set()
                mem = Calls(self, hop, probe).get(
                    (Reading.FB_RESERVED_MIB,), "nvmlDeviceGetMemoryInfo_v2", nv.nvmlDeviceGetMemoryInfo, m.handle, v2
                )
                if mem is None and probe:
                    m.unsupported.add(Reading.FB_RESERVED_MIB)
            if mem is None:
                mem = c.get(MIG_FB, "nvmlDeviceGetMemoryInfo", nv.nvmlDeviceGetMemoryInfo, m.handle)
            if mem is not None:
                out[Reading.FB_TOTAL_MIB] = float(mem.total // MIB)
                out[Reading.FB_USED_MIB] = float(mem.used // MIB)
                out[Reading.FB_FREE_MIB] = float(mem.free // MIB)
                reserved = getattr(mem, "reserved", None)
                if reserved is not None:
                    out[Reading.FB_RESERVED_MIB] = float(reserved // MIB)
        gpm_want = want & MIG_GPM
        if gpm_want and g.gpm_supported:
            out.update(
                self._gpm_metrics(
                    c,
                    gpm=m.gpm,
                    get_name="nvmlGpmMigSampleGet",
                    get=nv.nvmlGpmMigSampleGet,
                    args=(h, m.gi),
                    want=gpm_want,
                )
            )
        return out
