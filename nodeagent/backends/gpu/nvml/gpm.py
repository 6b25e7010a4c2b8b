"""NVML GPM (GPU performance monitoring, Hopper and later): sample buffers and the profiling metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from nodeagent.backends.gpu.nvml.base import NvmlBase
from nodeagent.backends.gpu.nvml.readers import GPM_METRICS, Calls, GpmState
from nodeagent.model.gpu import GPM_READINGS, Reading


class NvmlGpm(NvmlBase):
    def _free_gpm(self, gpm: GpmState) -> None:
        for buf in gpm.buffers:
            with contextlib.suppress(self.nvml_error):
                self.nv.nvmlGpmSampleFree(buf)
        gpm.buffers, gpm.primed = [], False

    def _gpm_metrics(
        self,
        c: Calls,
        *,
        gpm: GpmState,
        get_name: str,
        get: Callable[..., Any],
        args: tuple[Any, ...],
        want: frozenset[Reading],
    ) -> dict[Reading, float]:
        """Take a GPM sample; with the previous one, compute the wanted metrics. The first sample of a
        GPU or MIG device yields nothing (GPM metrics are rates between two samples)."""
        nv = self.nv
        if not gpm.buffers:
            for _ in range(2):
                buf = c.get((), "nvmlGpmSampleAlloc", nv.nvmlGpmSampleAlloc)
                if buf is None:
                    self._free_gpm(gpm)
                    return {}
                gpm.buffers.append(buf)
        current, previous = gpm.buffers[0], gpm.buffers[1]
        if c.get(GPM_READINGS, get_name, get, *args, current) is None:
            gpm.primed = False
            return {}
        if not gpm.primed:
            gpm.primed = True
            gpm.buffers.reverse()  # the current sample becomes the previous one
            return {}
        asked = [r for r in GPM_METRICS if r in want]
        request = nv.c_nvmlGpmMetricsGet_t()
        request.version = nv.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(asked)
        request.sample1 = previous
        request.sample2 = current
        for i, r in enumerate(asked):
            request.metrics[i].metricId = GPM_METRICS[r][0]
        gpm.buffers.reverse()
        if c.get((), "nvmlGpmMetricsGet", nv.nvmlGpmMetricsGet, request) is None:
            return {}
        out: dict[Reading, float] = {}
        for i, r in enumerate(asked):
            metric = request.metrics[i]
            if metric.nvmlReturn == nv.NVML_SUCCESS:
                out[r] = float(metric.value) * GPM_METRICS[r][1]
            elif metric.nvmlReturn in self.unsupported_codes:
                c.ns.add(r)
        return out
