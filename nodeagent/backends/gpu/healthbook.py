"""The health of each GPU as the sweeps see it: hangs with backoff, repeated failures, lost GPUs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from nodeagent.model.gpu import GpuHealthState

log = structlog.get_logger(__name__)

FAILING_SWEEPS_DEGRADE = 3
"""Consecutive sweeps with failing calls (other than NotSupported) after which a GPU is DEGRADED."""
MAX_HANGS = 3
"""Hangs in a row after which a GPU is no longer retried (each hang strands a thread in the library);
a reset of the GPU (simulator) or a restart of the agent tries it again."""


@dataclass
class _Health:
    state: GpuHealthState = GpuHealthState.OK
    reason: str = ""
    backoff_s: float = 0.0
    until: float = 0.0
    failing_sweeps: int = 0
    hangs: int = 0


class HealthBook:
    """Health per GPU index: DEGRADED after a hang (with an exponential backoff during which the GPU is
    skipped) or after repeatedly failing calls, LOST when the backend says so, OK once a read succeeds."""

    def __init__(
        self,
        *,
        backoff_initial_s: float = 30.0,
        backoff_max_s: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._now = monotonic
        self._gpus: dict[int, _Health] = {}

    def _get(self, index: int) -> _Health:
        h = self._gpus.get(index)
        if h is None:
            h = self._gpus[index] = _Health()
        return h

    def state(self, index: int) -> GpuHealthState:
        h = self._gpus.get(index)
        return h.state if h is not None else GpuHealthState.OK

    def reason(self, index: int) -> str:
        h = self._gpus.get(index)
        return h.reason if h is not None else ""

    def in_backoff(self, index: int) -> bool:
        h = self._gpus.get(index)
        return h is not None and h.until > self._now()

    def hung(self, index: int, call: str, timeout_s: float) -> None:
        h = self._get(index)
        h.hangs += 1
        h.state = GpuHealthState.DEGRADED
        if h.hangs >= MAX_HANGS:
            h.until = math.inf
            h.reason = (
                f"{call} did not return within {timeout_s:g}s ({h.hangs} times in a row); no longer retried: "
                "reset the GPU or restart the agent"
            )
            log.error("gpu_call_hung", gpu=index, call=call, timeout_s=timeout_s, retried=False)
            return
        h.backoff_s = min(self.backoff_max_s, h.backoff_s * 2 if h.backoff_s else self.backoff_initial_s)
        h.until = self._now() + h.backoff_s
        h.reason = f"{call} did not return within {timeout_s:g}s; retrying in {h.backoff_s:g}s"
        log.warning("gpu_call_hung", gpu=index, call=call, timeout_s=timeout_s, backoff_s=h.backoff_s)

    def lost(self, index: int, reason: str) -> None:
        h = self._get(index)
        if h.state != GpuHealthState.LOST:
            log.error("gpu_lost", gpu=index, reason=reason)
        h.state, h.reason = GpuHealthState.LOST, reason

    def degraded(self, index: int, reason: str) -> None:
        h = self._get(index)
        if h.state != GpuHealthState.DEGRADED or h.reason != reason:
            log.warning("gpu_degraded", gpu=index, reason=reason)
        h.state, h.reason = GpuHealthState.DEGRADED, reason

    def read_ok(self, index: int, failed_calls: int) -> None:
        """A read of this GPU finished; ``failed_calls`` counts its calls that failed."""
        h = self._get(index)
        h.backoff_s, h.until, h.hangs = 0.0, 0.0, 0
        h.failing_sweeps = h.failing_sweeps + 1 if failed_calls else 0
        if h.failing_sweeps >= FAILING_SWEEPS_DEGRADE:
            self.degraded(index, f"calls failing for {h.failing_sweeps} consecutive sweeps")
            return
        if h.state != GpuHealthState.OK:
            log.info("gpu_recovered", gpu=index, was=h.state.value)
            h.state, h.reason = GpuHealthState.OK, ""

    def clear(self, index: int) -> None:
        """Forget everything about a GPU (after a reset)."""
        self._gpus.pop(index, None)
