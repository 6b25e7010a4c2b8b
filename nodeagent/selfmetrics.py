"""The agent's own metrics that exist whatever subsystems run: event-loop lag and each subsystem's readiness.

They live in the agent's registry (``Context.registry``), which /metrics always serves, also with
``--only runtime``. ``nodeagent_subsystem_up`` is read from the status board at every collection, so it
agrees with /readyz from the first scrape. It reads the status board's immutable readiness mapping,
because renders run on a worker thread while the loop changes statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class SubsystemUp(Collector):
    def __init__(self, readiness: Callable[[], Mapping[str, bool]]) -> None:
        self.readiness = readiness

    def describe(self) -> Iterator[Metric]:
        yield self._family({})

    def collect(self) -> Iterator[Metric]:
        yield self._family(self.readiness())

    @staticmethod
    def _family(readiness: Mapping[str, bool]) -> Metric:
        up = GaugeMetricFamily(
            "nodeagent_subsystem_up", "1 when the subsystem is ready (running or degraded).", labels=["subsystem"]
        )
        for name, ready in sorted(readiness.items()):
            up.add_metric([name], 1 if ready else 0)
        return up


class SelfMetrics:
    """Registers the agent's own series once per registry."""

    def __init__(self, registry: CollectorRegistry, readiness: Callable[[], Mapping[str, bool]]) -> None:
        self.loop_lag = Gauge(
            "nodeagent_loop_lag_seconds",
            "Event-loop lag measured by the heartbeat task (seconds late).",
            registry=registry,
        )
        registry.register(SubsystemUp(readiness))
