"""send_parts: a body written as separate parts (no join of the cached bytes) reads back as one ordinary
HTTP response, with the right length, over keep-alive, and for HEAD."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nodeagent.metrics.response import SMALL_BODY, send_parts

CACHED = memoryview(b"".join(b"series_%06d 1\n" % i for i in range(20_000)))  # ~300 KiB, over SMALL_BODY


async def serving(parts: tuple[bytes | memoryview, ...]) -> TestClient:  # type: ignore[type-arg]
    async def handle(request: web.Request) -> web.StreamResponse:
        return await send_parts(request, parts, {"Content-Type": "text/plain"})

    app = web.Application()
    app.router.add_get("/m", handle)
    client: TestClient = TestClient(TestServer(app))  # type: ignore[type-arg]
    await client.start_server()
    return client


async def test_large_body_arrives_whole_and_in_order_over_keep_alive() -> None:
    assert len(CACHED) > SMALL_BODY
    client = await serving((b"age 1.5\n", CACHED))
    try:
        for _ in range(3):  # the same connection, one response after the other
            resp = await client.get("/m")
            body = await resp.read()
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == len(body) == 8 + len(CACHED)
            assert body == b"age 1.5\n" + CACHED.tobytes()
        replies = await asyncio.gather(*(client.get("/m") for _ in range(8)))
        assert {len(await r.read()) for r in replies} == {8 + len(CACHED)}
    finally:
        await client.close()


async def test_small_body_and_head() -> None:
    client = await serving((b"a 1\n", b"b 2\n"))
    try:
        resp = await client.get("/m")
        assert await resp.read() == b"a 1\nb 2\n"
    finally:
        await client.close()
    client = await serving((b"age 1\n", CACHED))
    try:
        resp = await client.head("/m")
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == 6 + len(CACHED)
        assert await resp.read() == b""
    finally:
        await client.close()
