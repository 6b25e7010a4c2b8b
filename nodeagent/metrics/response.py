"""Sending a cached body without copying it: headers, the cached bytes and the per-scrape suffix go to
the socket as separate writes.

``web.Response(body=...)`` needs the body as one bytes object (a copy of the cached body joined with the
tail), and aiohttp >= 3.11 then joins the headers with the body into one more buffer before writing
(Python < 3.12.9 has no safe ``writelines``). For a ~270 KiB body that is two large temporaries per
scrape: page faults and heap growth and shrinking (``brk``) on every request. Here each part is written
as it is: aiohttp joins the headers with the first part only, so that part should be the small one (the
exposition puts its per-scrape family first); a part the socket does not take at once is buffered by
the transport as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiohttp import web

SMALL_BODY = 32 * 1024
"""Below this, one joined write is cheaper than a system call per part."""


async def send_parts(
    request: web.Request, parts: Sequence[bytes | memoryview], headers: Mapping[str, str]
) -> web.StreamResponse:
    size = sum(len(p) for p in parts)
    if size < SMALL_BODY or request.method == "HEAD":
        return web.Response(body=b"".join(parts), headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response
