"""Watches: a resourceVersion to start from (410 Expired as an ERROR event when it is older than the retained
history), the live events of the store, bookmarks, and the end at ``timeoutSeconds``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from nodeagent.testing.apiserver.resources import ApiError, ResourceType
from nodeagent.testing.apiserver.store import Store, Watcher, selected


async def serve(
    store: Store,
    request: web.Request,
    rt: ResourceType,
    ns: str,
    *,
    field_name: dict[str, str],
    selector: list[tuple[str, str, str | None]],
    bookmark_interval_s: float,
    stopping: asyncio.Event,
) -> web.StreamResponse:
    """Stream the events after the request's resourceVersion (all objects as ADDED from none), then live ones,
    bookmarks every ``bookmark_interval_s`` when asked, until ``timeoutSeconds`` or ``stopping``."""
    rv_text = request.query.get("resourceVersion", "")
    bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
    timeout = float(request.query.get("timeoutSeconds", "0") or 0)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)

    async def send(kind: str, obj: dict[str, Any]) -> None:
        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
    watcher = Watcher(rt, ns, field_name, selector, queue)
    if rv_text in ("", "0"):
        for obj in store.items(rt, ns):
            if selected(obj, field_name, selector):
                await send("ADDED", obj)
    else:
        rv = int(rv_text)
        if rv < store.compacted_rv:
            expired = ApiError(410, f"too old resource version: {rv} ({store.compacted_rv})")
            await send("ERROR", expired.status())
            await response.write_eof()
            return response
        for ev_rv, plural, kind, obj in list(store.history):
            same = plural == rt.plural and (not ns or obj["metadata"].get("namespace") == ns)
            if ev_rv > rv and same and selected(obj, field_name, selector):
                await send(kind, obj)
    store.watchers.add(watcher)
    deadline = time.monotonic() + timeout if timeout > 0 else None
    try:
        while not stopping.is_set():
            wait = bookmark_interval_s if bookmarks else 3600.0
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            try:
                item = await asyncio.wait_for(queue.get(), timeout=wait)
            except TimeoutError:
                if bookmarks and (deadline is None or time.monotonic() < deadline):
                    meta = {"resourceVersion": str(store.rv)}
                    await send("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})
                continue
            if item is None:
                break
            await send(*item)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        store.watchers.discard(watcher)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
