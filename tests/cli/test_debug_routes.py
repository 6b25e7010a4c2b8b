"""`POST /debug/sim/xid` without its parameters is a 400 naming them, not an XID 79 on GPU 0 (issue 23 item 25)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.gpu.sim.debug import debug_routes
from nodeagent.model.gpu import XidEvent


async def test_a_fault_without_its_parameters_is_a_400_naming_them() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2)
    await sim.open()
    pushed: list[XidEvent] = []
    unwatch = sim.watch_events(pushed.append)
    app = web.Application()
    for method, path, handler in debug_routes(sim):
        app.router.add_route(method, path, handler)
    client: TestClient = TestClient(TestServer(app))  # type: ignore[type-arg]
    await client.start_server()
    try:
        for query, missing in (("", "gpu, xid"), ("?gpu=1", "xid"), ("?xid=48", "gpu"), ("?gpu=&xid=48", "gpu")):
            resp = await client.post(f"/debug/sim/xid{query}")
            assert resp.status == 400, query
            body = await resp.json()
            assert body["error"].startswith(f"xid: missing query parameter(s) {missing}, e.g. /debug/sim/xid?gpu=0")
        for fault in ("lose", "hang", "holders"):
            resp = await client.post(f"/debug/sim/{fault}")
            assert resp.status == 400 and "missing query parameter(s) gpu" in (await resp.json())["error"]
        assert pushed == []  # nothing injected on any GPU
        resp = await client.post("/debug/sim/xid?gpu=1&xid=48")
        assert resp.status == 200 and await resp.json() == {"injected": "xid", "gpu": 1}
        assert [(e.gpu_index, e.xid) for e in pushed] == [(1, 48)]
    finally:
        unwatch()
        await client.close()
        await sim.close()
