"""Which GPUs the device plugin lists Unhealthy, from the GPU-state owner's events (pure: the caller passes the
clock). The classification is ``gpuhealth``'s, the one table (``gpuhealth.classify``: NVIDIA's XID catalogue,
``gpuhealth.ignored_xids``; a GPU lost or NVML not answering), and so is the hold: an XID keeps its GPU
unhealthy for ``gpuhealth.xid_window_s``, and a GPU that keeps failing stays unhealthy until it has stayed
healthy for the flapping hold (``gpuhealth.flapping``). Unlike NVIDIA's plugin, a GPU comes back Healthy.

An XID counts for the whole GPU, MIG devices included (also one naming a GPU instance: the conservative choice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nodeagent.gpuhealth import classify, flapping
from nodeagent.model.gpu import GpuHealthState, XidEvent
from nodeagent.model.health import Verdict


@dataclass
class HealthBook:
    window_s: float
    ignored: tuple[int, ...]
    hold_base_s: float
    _xids: dict[int, dict[tuple[int, int | None], classify.SeenXid]] = field(default_factory=dict)
    _states: dict[int, GpuHealthState] = field(default_factory=dict)
    _flaps: dict[int, flapping.FlapState] = field(default_factory=dict)

    def xid(self, event: XidEvent, now: float) -> None:
        per_gpu = self._xids.setdefault(event.gpu_index, {})
        key = (event.xid, event.gpu_instance_id)
        old = per_gpu.get(key)
        per_gpu[key] = classify.SeenXid(event.xid, now, (old.count if old else 0) + 1, event.gpu_instance_id)

    def states(self, states: Mapping[int, GpuHealthState]) -> None:
        self._states = dict(states)

    def evaluate(self, gpus: Iterable[int], now: float) -> tuple[dict[int, str], float | None]:
        """GPU index → why it is unhealthy now, and the seconds until that may change (None: only an event
        can change it)."""
        unhealthy: dict[int, str] = {}
        waits: list[float] = []
        for index in sorted(set(gpus) | set(self._xids) | set(self._states)):
            seen = self._xids.get(index, {}).values()
            raw = classify.gpu_report(
                index,
                "",
                seen,
                self._states.get(index, GpuHealthState.OK),
                now=now,
                window_s=self.window_s,
                ignored=self.ignored,
            )
            report, left = flapping.damp(
                raw, self._flaps.setdefault(index, flapping.FlapState()), now=now, base_s=self.hold_base_s
            )
            if left is not None:
                waits.append(left)
            expiry = classify.next_expiry(seen, now=now, window_s=self.window_s)
            if expiry is not None:
                waits.append(expiry)
            if report.verdict >= Verdict.FAIL:
                unhealthy[index] = "; ".join(i.message for i in report.incidents if i.verdict >= Verdict.FAIL)
        self._forget(now)
        return unhealthy, (min(waits) if waits else None)

    def _forget(self, now: float) -> None:
        for index in list(self._xids):
            kept = {k: v for k, v in self._xids[index].items() if now - v.last_seen < self.window_s}
            if kept:
                self._xids[index] = kept
            else:
                del self._xids[index]
