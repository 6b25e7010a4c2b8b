"""The simulator's HTTP routes, mounted by the composition root only in simulation.

``POST /debug/sim/{fault}`` injects a fault into a simulated GPU: ``xid`` (query ``gpu``, ``xid``), ``lose``
(``gpu``), ``hang`` (``gpu``, ``seconds``), ``holders`` (``gpu``, ``pid``, ``name``; no ``pid`` clears them: a
process that keeps MIG from changing the GPU), ``reset`` (``block`` = ``reboot`` | ``in-use`` | empty: how GPU
resets fail) and ``reboot`` (what a node reboot does to the GPUs). A real node has no such routes at all.
``gpu`` (and ``xid`` for ``xid``) must be given: a request without them is a 400 naming what is missing, never
a fault on a GPU nobody chose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from nodeagent.model.mig import GpuProcess

if TYPE_CHECKING:
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def debug_routes(gpus: object) -> list[tuple[str, str, Handler]]:
    """The routes for ``gpus`` when it is the simulator; none otherwise."""
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend

    if not isinstance(gpus, SimGpuBackend):
        return []
    sim = gpus

    async def inject(request: web.Request) -> web.Response:
        return _inject(sim, request)

    return [("POST", "/debug/sim/{fault}", inject)]


REQUIRED = {"xid": ("gpu", "xid"), "lose": ("gpu",), "hang": ("gpu",), "holders": ("gpu",)}
"""Query parameters each fault needs."""


def _inject(sim: SimGpuBackend, request: web.Request) -> web.Response:
    fault = request.match_info["fault"]
    missing = [name for name in REQUIRED.get(fault, ()) if not request.query.get(name, "").strip()]
    if missing:
        example = "gpu=0&xid=79" if fault == "xid" else "gpu=0"
        return web.json_response(
            {"error": f"{fault}: missing query parameter(s) {', '.join(missing)}, e.g. /debug/sim/{fault}?{example}"},
            status=400,
        )
    try:
        gpu = int(request.query.get("gpu", "0"))
        if fault == "xid":
            sim.inject_xid(gpu, int(request.query["xid"]))
        elif fault == "lose":
            sim.lose_gpu(gpu)
        elif fault == "hang":
            sim.hang_calls(gpu, float(request.query.get("seconds", "10")))
        elif fault == "holders":
            pid = request.query.get("pid", "")
            name = request.query.get("name", "app")
            sim.set_holders(gpu, [GpuProcess(int(pid), name, gpu)] if pid else [])
        elif fault == "reset":
            sim.block_reset(request.query.get("block") or None, request.query.get("reason", ""))
        elif fault == "reboot":
            sim.reboot()
        else:
            known = "xid, lose, hang, holders, reset or reboot"
            return web.json_response({"error": f"unknown fault {fault!r}; use {known}"}, status=404)
    except (ValueError, KeyError, IndexError) as err:
        return web.json_response({"error": str(err)}, status=400)
    return web.json_response({"injected": fault, "gpu": gpu})
