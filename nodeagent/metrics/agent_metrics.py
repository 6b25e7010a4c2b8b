"""The agent's own metrics, as a prometheus_client collector registered in ``ctx.registry``.

It yields values from an immutable ``AgentState`` captured on the event loop at the end of each sweep,
so rendering (which runs on a worker thread) never reads state that the loop is changing.
``nodeagent_snapshot_age_seconds`` is not here: it must be current at every scrape, so the exposition
appends it per scrape (see exposition.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class AgentState:
    collection_duration_s: float = 0.0
    call_failures: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    xids: Mapping[int, int] = field(default_factory=dict)


class AgentMetrics(Collector):
    def __init__(self) -> None:
        self.state = AgentState()

    def describe(self) -> Iterator[Metric]:
        yield from self._families(AgentState())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.state)

    @staticmethod
    def _families(state: AgentState) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "nodeagent_collection_duration_seconds",
            "Wall time of the last GPU sweep, one hop to the backend included.",
            value=state.collection_duration_s,
        )
        failures = CounterMetricFamily(
            "nodeagent_nvml_call_failures", "GPU backend calls that failed or timed out.", labels=["call"]
        )
        for call, n in sorted(state.call_failures.items()):
            failures.add_metric([call], n)
        yield failures
        xids = CounterMetricFamily("nodeagent_xid_errors", "XID errors seen, by XID.", labels=["xid"])
        for xid, n in sorted(state.xids.items()):
            xids.add_metric([str(xid)], n)
        yield xids
