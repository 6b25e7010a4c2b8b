"""The agent's HTTP endpoint on an aiohttp AppRunner inside our own loop.

/healthz: alive and the loop responsive; /readyz: 200 only when every enabled subsystem is ready, the body
lists each one's phase and reason; /status: JSON with inventory, subsystems and last plans. Subsystems add
their own routes (the metrics subsystem adds /metrics) through ``Context.add_route``. In simulation,
/debug/sim/* injects faults into the simulated GPUs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nodeagent.health import health_report, readiness_text, status_document

if TYPE_CHECKING:
    from nodeagent.app import Agent

HEALTHY_HEARTBEAT_AGE_S = 5.0


class HttpServer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/status", self.status)
        for method, path, handler in agent.ctx.routes:
            self.app.router.add_route(method, path, handler)
        if agent.ctx.simulate:
            self.app.router.add_post("/debug/sim/{fault}", self.sim_fault)
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self.address = ""

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
        age = time.monotonic() - self.agent.last_heartbeat
        ok = age < HEALTHY_HEARTBEAT_AGE_S
        body = health_report(ok=ok, heartbeat_age_s=age, loop_lag_s=self.agent.loop_lag_s)
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        statuses = self.agent.statuses()
        ready = all(s.ready for s in statuses.values())
        return web.Response(text=readiness_text(statuses, ready=ready), status=200 if ready else 503)

    async def status(self, request: web.Request) -> web.Response:
        doc = status_document(
            inventory=self.agent.parts.inventory,
            statuses=self.agent.statuses(),
            plans=self.agent.last_plans(),
            extra={
                "started_at": self.agent.started_at,
                "simulate": self.agent.ctx.simulate,
                "root": str(self.agent.ctx.root.path),
                "node_name": self.agent.ctx.node_name,
            },
        )
        return web.json_response(doc)

    async def sim_fault(self, request: web.Request) -> web.Response:
        """Fault injection into the simulated GPUs: xid, lose, hang (query: gpu, xid, seconds)."""
        gpus: Any = self.agent.ctx.gpus
        fault = request.match_info["fault"]
        try:
            gpu = int(request.query.get("gpu", "0"))
            if fault == "xid":
                gpus.inject_xid(gpu, int(request.query.get("xid", "79")))
            elif fault == "lose":
                gpus.lose_gpu(gpu)
            elif fault == "hang":
                gpus.hang_calls(gpu, float(request.query.get("seconds", "10")))
            else:
                return web.json_response({"error": f"unknown fault {fault!r}; use xid, lose or hang"}, status=404)
        except (ValueError, KeyError, IndexError, AttributeError) as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response({"injected": fault, "gpu": gpu})
