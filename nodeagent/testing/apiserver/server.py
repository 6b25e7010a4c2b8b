"""The test API server itself: its lifecycle, the helpers tests use (direct state access, no auth), and the
request pipeline (503 when made unavailable, authentication, rate limit, discovery, routing, RBAC, then the
verb: get, list, watch, create, update, patch with its three content types, delete). Patch semantics are
``k8s_patch``'s, validation ``validate``'s, storage ``store``'s, watches ``watch``'s."""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from nodeagent.testing import k8s_patch
from nodeagent.testing.apiserver import watch
from nodeagent.testing.apiserver.auth import RateLimiter, TokenFile
from nodeagent.testing.apiserver.resources import (
    APPLY_PATCH,
    BY_PATH,
    FIELD_SELECTORS,
    JSON_PATCH,
    MERGE_PATCH,
    RESOURCES,
    STRATEGIC_MERGE_PATCH,
    ApiError,
    ResourceType,
    Target,
    discovery,
)
from nodeagent.testing.apiserver.store import Counters, Store, parse_selector, selected, strip
from nodeagent.testing.apiserver.validate import check_identity, invalid, validate
from nodeagent.testing.k8s_rbac import Authorizer, Request, User, forbidden_message


class TestApiServer:
    """The server's state and its aiohttp application. Use ``start()``/``stop()`` or ``run_standalone``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        token_file: str | Path,
        rbac: str | Path | None = None,
        qps: float = 0.0,
        burst: int = 100,
        history: int = 1000,
        bookmark_interval_s: float = 60.0,
    ) -> None:
        self.tokens = TokenFile(token_file)
        self.authorizer = Authorizer.from_file(rbac) if rbac else Authorizer(())
        self.limiter = RateLimiter(qps, burst)
        self.store = Store(history)
        self.bookmark_interval_s = bookmark_interval_s
        self.counters = Counters()
        self.unavailable_retry_after: int | None = None
        """When set, every request gets 503 with this Retry-After (an API server restarting)."""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._scheme = "http"
        self._stopping = asyncio.Event()

    # ---- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None) -> str:
        """Listen (HTTPS with ``tls``; kubectl sends a bearer token only over HTTPS) and return the URL."""
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._scheme = "https" if tls is not None else "http"
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.url

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._stopping.set()
        for w in list(self.store.watchers):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- test helpers (direct state access, no auth)

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        rt = BY_PATH[("", "v1", "nodes")]
        obj = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        return self._create_stored(rt, obj, "")

    def add_pod(self, name: str, namespace: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A running Pod bound to ``node`` (what a DaemonSet's pod looks like to a list)."""
        rt = BY_PATH[("", "v1", "pods")]
        obj = {
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example"}]},
            "status": {"phase": "Running"},
        }
        return self._create_stored(rt, obj, namespace)

    def object(self, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        rt = next(r for r in RESOURCES if r.plural == plural)
        found = self.store.get(rt, namespace, name)
        return copy.deepcopy(found) if found is not None else None

    def delete_object(self, plural: str, name: str, namespace: str = "") -> None:
        rt = next(r for r in RESOURCES if r.plural == plural)
        self.store.delete(rt, namespace, name)

    def _create_stored(self, rt: ResourceType, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta.setdefault("generation", 1)
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        return self.store.put(rt, obj, "ADDED")

    # ---- request pipeline

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.unavailable_retry_after is not None:
                raise ApiError(
                    503,
                    "the server is currently unable to handle the request",
                    retry_after=self.unavailable_retry_after,
                )
            user = self._authenticate(request)
            self.counters.requests[user.name] += 1
            wait = self.limiter.admit(user.name, time.monotonic())
            if wait > 0:
                raise ApiError(429, "Too many requests, please try again later.", retry_after=max(1, round(wait)))
            path = request.path.rstrip("/")
            discovery_doc = discovery(path)
            if discovery_doc is not None:
                return web.json_response(discovery_doc)
            target = self._route(path)
            rt, namespace, name, sub = target.rt, target.namespace, target.name, target.sub
            verb = self._verb(request, name)
            self.counters.by_verb[(verb, rt.plural)] += 1
            resource = f"{rt.plural}/{sub}" if sub else rt.plural
            req = Request(verb, rt.group, resource, namespace, name)
            if not self.authorizer.allowed(user, req):
                raise ApiError(
                    403,
                    forbidden_message(user, req),
                    details={"name": name, "group": rt.group, "kind": rt.plural},
                )
            if verb in ("create", "update", "patch", "delete"):
                self.counters.writes[user.name] += 1
                self.counters.write_times.append((time.monotonic(), user.name))
            return await self._dispatch(request, user, verb, target)
        except ApiError as err:
            return err.response()

    def _authenticate(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = self.tokens.lookup(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            raise ApiError(401, "Unauthorized")
        return user

    def _route(self, path: str) -> Target:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        namespace = ""
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        rt = BY_PATH.get((group, version, rest[0]))
        if rt is None or (rt.namespaced != bool(namespace) and not (rt.namespaced and len(rest) == 1)):
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (sub == "status" and rt.status_subresource):
            raise ApiError(404, "the server could not find the requested resource")
        return Target(rt, namespace, name, sub)

    @staticmethod
    def _verb(request: web.Request, name: str) -> str:
        method = request.method
        if method == "GET":
            if name:
                return "get"
            return "watch" if request.query.get("watch") in ("1", "true") else "list"
        if method == "POST" and not name:
            return "create"
        if method == "PUT" and name:
            return "update"
        if method == "PATCH" and name:
            return "patch"
        if method == "DELETE":
            return "delete" if name else "deletecollection"
        raise ApiError(405, f"the server does not allow this method on the requested resource: {method}")

    async def _dispatch(self, request: web.Request, user: User, verb: str, target: Target) -> web.StreamResponse:
        rt, ns, name = target.rt, target.namespace, target.name
        if verb == "get":
            return web.json_response(self._existing(rt, ns, name))
        if verb == "list":
            return web.json_response(self._list(request, rt, ns))
        if verb == "watch":
            return await self._watch(request, rt, ns)
        if verb == "create":
            return web.json_response(self._create(rt, ns, await self._body(request)), status=201)
        if verb == "update":
            return web.json_response(self._update(target, await self._body(request), user))
        if verb == "patch":
            return web.json_response(await self._patch(request, target, user))
        if verb == "delete":
            self._existing(rt, ns, name)
            return web.json_response(self.store.delete(rt, ns, name))
        raise ApiError(405, f"{verb} is not supported by the test API server")

    # ---- reads

    def _existing(self, rt: ResourceType, ns: str, name: str) -> dict[str, Any]:
        obj = self.store.get(rt, ns, name)
        if obj is None:
            raise ApiError(
                404, f'{rt.qualified} "{name}" not found', details={"name": name, "group": rt.group, "kind": rt.plural}
            )
        return obj

    def _list(self, request: web.Request, rt: ResourceType, ns: str) -> dict[str, Any]:
        field_name, selector = self._selectors(request, rt)
        rv = request.query.get("resourceVersion", "")
        if request.query.get("resourceVersionMatch") == "Exact" and rv and int(rv) < self.store.compacted_rv:
            raise ApiError(410, f"too old resource version: {rv} ({self.store.compacted_rv})")
        items = [o for o in self.store.items(rt, ns) if selected(o, field_name, selector)]
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": items,
        }

    @staticmethod
    def _selectors(request: web.Request, rt: ResourceType) -> tuple[dict[str, str], list[tuple[str, str, str | None]]]:
        fields: dict[str, str] = {}
        supported = FIELD_SELECTORS.get(rt.plural, ("metadata.name",))
        for term in filter(None, request.query.get("fieldSelector", "").split(",")):
            key, _, value = term.replace("==", "=").partition("=")
            if key not in supported:
                raise ApiError(400, f"field label not supported: {key}")
            fields[key] = value
        return fields, parse_selector(request.query.get("labelSelector", ""))

    async def _watch(self, request: web.Request, rt: ResourceType, ns: str) -> web.StreamResponse:
        field_name, selector = self._selectors(request, rt)
        return await watch.serve(
            self.store,
            request,
            rt,
            ns,
            field_name=field_name,
            selector=selector,
            bookmark_interval_s=self.bookmark_interval_s,
            stopping=self._stopping,
        )

    # ---- writes

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except ValueError as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from err

    def _create(self, rt: ResourceType, ns: str, body: Any) -> dict[str, Any]:
        obj = check_identity(rt, ns, "", body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise ApiError(400, "resourceVersion should not be set on objects to be created")
        validate(rt, obj, None)
        if self.store.get(rt, ns, meta["name"]) is not None:
            raise ApiError(
                409,
                f'{rt.qualified} "{meta["name"]}" already exists',
                reason="AlreadyExists",
                details={"name": meta["name"], "group": rt.group, "kind": rt.plural},
            )
        for key in ("uid", "creationTimestamp", "generation"):
            meta.pop(key, None)
        return self._create_stored(rt, obj, ns)

    def _conflict(self, rt: ResourceType, name: str) -> ApiError:
        return ApiError(
            409,
            f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            details={"name": name, "group": rt.group, "kind": rt.plural},
        )

    def _store_update(self, target: Target, old: dict[str, Any], new: dict[str, Any], user: User) -> dict[str, Any]:
        rt, sub = target.rt, target.sub
        """Keep server-owned fields, honour the status subresource split, validate, store if changed."""
        new = copy.deepcopy(new)
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        for key in ("uid", "creationTimestamp", "name", "namespace"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        new["kind"], new["apiVersion"] = rt.kind, rt.api_version
        if rt.status_subresource:
            if sub == "status":  # the Node's status strategy resets only the spec: labels may change here
                new["spec"] = copy.deepcopy(old.get("spec", {}))
            else:
                new["status"] = copy.deepcopy(old.get("status", {}))
        validate(rt, new, old)
        meta = new["metadata"]
        meta["generation"] = old_meta.get("generation", 1) + (1 if new.get("spec") != old.get("spec") else 0)
        if strip(new) == strip(old):
            return old
        self.counters.stored[user.name] += 1
        return self.store.put(rt, new, "MODIFIED")

    def _update(self, target: Target, body: Any, user: User) -> dict[str, Any]:
        rt, ns, name = target.rt, target.namespace, target.name
        old = self._existing(rt, ns, name)
        obj = check_identity(rt, ns, name, body)
        rv = obj["metadata"].get("resourceVersion")
        if not rv and rt.custom:
            raise invalid(
                rt, name, [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")]
            )
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        return self._store_update(target, old, obj, user)

    async def _patch(self, request: web.Request, target: Target, user: User) -> dict[str, Any]:
        rt, ns, name = target.rt, target.namespace, target.name
        content_type = request.content_type
        allowed = [MERGE_PATCH, JSON_PATCH] + ([] if rt.custom else [STRATEGIC_MERGE_PATCH])
        if content_type == APPLY_PATCH and not request.query.get("fieldManager"):
            raise ApiError(
                422,
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                details={"group": "meta.k8s.io", "kind": "PatchOptions"},
            )
        if content_type not in allowed:  # server-side apply too: not reproduced
            raise ApiError(415, "415: Unsupported Media Type")
        body = await self._body(request)
        old = self._existing(rt, ns, name)
        try:
            if content_type == MERGE_PATCH:
                if not isinstance(body, dict):
                    raise k8s_patch.PatchError("a merge patch must be a JSON object")
                patched = k8s_patch.merge_patch(old, body)
            elif content_type == STRATEGIC_MERGE_PATCH:
                if not isinstance(body, dict):
                    raise k8s_patch.PatchError("a strategic merge patch must be a JSON object")
                patched = k8s_patch.strategic_merge_patch(old, body)
            else:
                patched = k8s_patch.json_patch(old, body)
        except k8s_patch.PatchError as err:
            raise ApiError(err.code, str(err)) from err
        patched = check_identity(rt, ns, name, patched)
        if patched["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        return self._store_update(target, old, patched, user)
