"""The agent's HTTP endpoint on an aiohttp AppRunner inside our own loop.

It knows the agent only through ``StatusView`` (no import of the agent: the dependency points one way).

- /healthz: alive and the loop responsive; /readyz: 200 only when every enabled subsystem is ready, the
  body lists each one's phase and reason; /status: JSON with inventory, subsystems and last plans.
- /metrics: the metrics subsystem's GPU exposition when it runs (it includes the agent's registry);
  otherwise the agent's own registry (loop lag, subsystem up, process metrics), so /metrics always answers.
- Routes added by subsystems (and, in simulation only, the simulator's /debug/sim/*) through
  ``Context.add_route``; each request looks its handler up, so a restarted subsystem is served.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nodeagent.aio import run_blocking
from nodeagent.health import health_report, readiness_text, status_document
from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan
from nodeagent.subsystem import Handler, Status

HEALTHY_HEARTBEAT_AGE_S = 5.0
METRICS = ("GET", "/metrics")


class StatusView(Protocol):
    """What the HTTP server may read of the agent."""

    last_heartbeat: float
    loop_lag_s: float

    @property
    def inventory(self) -> Inventory | None: ...

    def statuses(self) -> dict[str, Status]: ...

    def last_plans(self) -> dict[str, Plan]: ...

    def describe(self) -> dict[str, Any]: ...


class HttpServer:
    def __init__(
        self, view: StatusView, routes: Mapping[tuple[str, str], Handler], registry: CollectorRegistry
    ) -> None:
        self.view = view
        self.routes = routes
        self.registry = registry
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/status", self.status)
        self.app.router.add_get("/metrics", self.metrics)
        for method, path in routes:
            if (method, path) != METRICS:
                self.app.router.add_route(method, path, self._dispatch(method, path))
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self.address = ""

    def _dispatch(self, method: str, path: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.routes[(method, path)](request)

        return handle

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]"), int(port), reuse_address=True)
        await site.start()
        sockets = [s for srv in [site._server] if srv is not None for s in getattr(srv, "sockets", [])]
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.address = f"{bound[0]}:{bound[1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        age = time.monotonic() - self.view.last_heartbeat
        ok = age < HEALTHY_HEARTBEAT_AGE_S
        body = health_report(ok=ok, heartbeat_age_s=age, loop_lag_s=self.view.loop_lag_s)
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        statuses = self.view.statuses()
        ready = all(s.ready for s in statuses.values())
        return web.Response(text=readiness_text(statuses, ready=ready), status=200 if ready else 503)

    async def status(self, request: web.Request) -> web.Response:
        doc = status_document(
            inventory=self.view.inventory,
            statuses=self.view.statuses(),
            plans=self.view.last_plans(),
            extra=self.view.describe(),
        )
        return web.json_response(doc)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        gpu_metrics = self.routes.get(METRICS)
        if gpu_metrics is not None:
            return await gpu_metrics(request)
        body = await run_blocking(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
