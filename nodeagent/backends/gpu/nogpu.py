"""The GPU backend of a node without GPUs in use: no GPUs, no readings."""

from __future__ import annotations

import time

from nodeagent.model.gpu import Inventory, Sample, SampleRequest


class NoGpuBackend:
    """Stands in when only GPU-free subsystems run (e.g. `apply --only runtime` before a driver exists)."""

    kind = "none"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def inventory(self) -> Inventory:
        return Inventory(backend=self.kind, driver_version="", nvml_version="", cuda_driver_version=0)

    async def sample(self, request: SampleRequest) -> Sample:
        return Sample(taken_at=time.time(), gpus={})
