"""Per device (a whole GPU, or one GPU instance's MIG device), whether it is unhealthy now, from the GPU-state
owner's events (pure: the caller passes the clock): the one classification (``classify``: NVIDIA's XID
catalogue, ``gpuhealth.ignored_xids``; a GPU lost or NVML not answering) and the one hold (``flapping``). An
XID keeps its device unhealthy for ``gpuhealth.xid_window_s``; one that keeps failing stays unhealthy until it
has stayed healthy for the flapping hold. The device plugin (Unhealthy devices) and the DRA plugin (device
taints) both read it, so a GPU is unhealthy to both for the same reason and time.

An XID that names a GPU instance counts for that instance only; one that names none, a lost GPU and NVML not
answering count for the whole GPU and every MIG device on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nodeagent.gpuhealth import classify, flapping
from nodeagent.model.gpu import GpuHealthState, XidEvent
from nodeagent.model.health import Verdict

Key = tuple[int, int | None]
"""(GPU index, GPU-instance id); None: the whole GPU."""


@dataclass(frozen=True)
class Verdicts:
    gpus: Mapping[int, str]
    """GPU index → why the GPU (and every MIG device on it) is unhealthy."""
    instances: Mapping[tuple[int, int], str]
    """(GPU index, GPU-instance id) → why that MIG device is unhealthy."""
    wait_s: float | None
    """Seconds until a verdict may change without an event (an XID window or a hold ending)."""
    xids: Mapping[Key, tuple[int, ...]] = field(default_factory=dict)
    """Device → the failing XIDs seen within the window (empty for a GPU lost, or one only held by the hold)."""
    lost: frozenset[int] = frozenset()
    """GPU indexes the GPU-state owner reports lost now."""
    degraded: frozenset[int] = frozenset()
    """GPU indexes whose NVML calls hang or fail now (what the GPU is like cannot be read)."""


@dataclass
class HealthBook:
    window_s: float
    ignored: tuple[int, ...]
    hold_base_s: float
    _xids: dict[Key, dict[tuple[int, int | None], classify.SeenXid]] = field(default_factory=dict)
    _states: dict[int, GpuHealthState] = field(default_factory=dict)
    _flaps: dict[Key, flapping.FlapState] = field(default_factory=dict)

    def xid(self, event: XidEvent, now: float) -> None:
        seen = self._xids.setdefault((event.gpu_index, event.gpu_instance_id), {})
        key = (event.xid, event.gpu_instance_id)
        old = seen.get(key)
        seen[key] = classify.SeenXid(event.xid, now, (old.count if old else 0) + 1, event.gpu_instance_id)

    def states(self, states: Mapping[int, GpuHealthState]) -> None:
        self._states = dict(states)

    def evaluate(self, gpus: Iterable[int], now: float) -> Verdicts:
        keys: set[Key] = {(i, None) for i in set(gpus) | set(self._states)} | set(self._xids) | set(self._flaps)
        whole: dict[int, str] = {}
        instances: dict[tuple[int, int], str] = {}
        xids: dict[Key, tuple[int, ...]] = {}
        waits: list[float] = []
        for key in sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
            index, gi = key
            seen = self._xids.get(key, {}).values()
            state = self._states.get(index, GpuHealthState.OK) if gi is None else GpuHealthState.OK
            raw = classify.gpu_report(index, "", seen, state, now=now, window_s=self.window_s, ignored=self.ignored)
            report, left = flapping.damp(
                raw, self._flaps.setdefault(key, flapping.FlapState()), now=now, base_s=self.hold_base_s
            )
            if left is not None:
                waits.append(left)
            expiry = classify.next_expiry(seen, now=now, window_s=self.window_s)
            if expiry is not None:
                waits.append(expiry)
            if report.verdict >= Verdict.FAIL:
                failing = {
                    s.xid
                    for s in seen
                    if now - s.last_seen < self.window_s and classify.classify_xid(s.xid, self.ignored) is not None
                }
                if failing:
                    xids[key] = tuple(sorted(failing))
                why = "; ".join(i.message for i in report.incidents if i.verdict >= Verdict.FAIL)
                if gi is None:
                    whole[index] = why
                else:
                    instances[(index, gi)] = why
        self._forget(now)
        lost = frozenset(i for i, s in self._states.items() if s is GpuHealthState.LOST)
        degraded = frozenset(i for i, s in self._states.items() if s is GpuHealthState.DEGRADED)
        return Verdicts(whole, instances, min(waits) if waits else None, xids, lost, degraded)

    def _forget(self, now: float) -> None:
        for key in list(self._xids):
            kept = {k: v for k, v in self._xids[key].items() if now - v.last_seen < self.window_s}
            if kept:
                self._xids[key] = kept
            else:
                del self._xids[key]
