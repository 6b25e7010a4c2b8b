"""Series that carry labels beyond the entity's: dcgm-exporter's computed counters and the XID gauge.

- ``DCGM_FI_DEV_XID_ERRORS`` gets ``err_code`` and ``err_msg`` (the XID catalogue's text) as in its GPU
  collector;
- ``DCGM_EXP_XID_ERRORS_COUNT{window_size_in_ms, xid}``: per XID value, how many were seen in the window;
  with none, one series without ``xid`` and value 0 (its expcollector);
- ``DCGM_EXP_CLOCK_EVENTS_COUNT{window_size_in_ms, clock_event}``: per clock event, the samples in the
  window that had it set; with none, one series without ``clock_event`` and value 0;
- ``DCGM_EXP_GPU_HEALTH_STATUS{health_error_code, health_watch}``: per GPU and DCGM health watch, the
  published verdict (0 pass, 10 warn, 20 fail) and its ``DCGM_FR_*`` code (its gpu_health_collector.go);
  the extra labels in the order dcgm-exporter's template writes its label map (by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nodeagent.metrics.fields import UNKNOWN_XID_MESSAGE, Counter, Source, xid_messages
from nodeagent.metrics.series_labels import Entity, escape

if TYPE_CHECKING:
    from nodeagent.metrics.collector import Snapshot
    from nodeagent.model.health import NodeGpuHealth

LABELLED_SOURCES = frozenset({Source.XID, Source.XID_COUNT, Source.CLOCK_EVENTS_COUNT})

LabelledValue = tuple[str, float]
"""Extra labels rendered without braces or leading comma (``xid="79"``), and the value."""


def xid_labels(xid: int) -> str:
    message = xid_messages().get(xid, UNKNOWN_XID_MESSAGE)
    return f'err_code="{xid}",err_msg="{escape(message)}"'


def labelled_values(counter: Counter, entity: Entity, snap: Snapshot) -> list[LabelledValue]:
    """The series of one labelled family for one entity (empty: none for this entity)."""
    source = counter.spec.source
    index = entity.gpu.index
    if not entity.whole_gpu:
        return []
    if source is Source.XID:
        last = snap.last_xid.get(index)
        return [] if last is None else [(xid_labels(last), float(last))]
    if source is Source.XID_COUNT:
        return _windowed(snap.xid_window.get(index), snap.xid_window_ms, "xid")
    if source is Source.CLOCK_EVENTS_COUNT:
        if index not in snap.gpus:
            return []
        return _windowed(snap.clock_event_window.get(index), snap.clock_events_window_ms, "clock_event")
    raise ValueError(f"{counter.name} has no extra labels")


def _windowed(counts: Mapping[Any, int] | None, window_ms: int, label: str) -> list[LabelledValue]:
    window = f'window_size_in_ms="{window_ms}"'
    if not counts:
        return [(window, 0.0)]
    return [(f'{window},{label}="{key}"', float(n)) for key, n in sorted(counts.items(), key=lambda kv: str(kv[0]))]


def health_values(entity: Entity, health: NodeGpuHealth | None) -> list[LabelledValue]:
    """DCGM_EXP_GPU_HEALTH_STATUS of one GPU: one series per health watch (none before a report)."""
    if health is None:
        return []
    report = next((g for g in health.gpus if g.index == entity.gpu.index), None)
    if report is None:
        return []
    return [
        (f'health_error_code="{escape(code)}",health_watch="{watch}"', float(int(verdict)))
        for watch, (verdict, code) in report.watch_status().items()
    ]
