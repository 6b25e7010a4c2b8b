"""A test Kubernetes API server that enforces the rules the agent depends on.

No kube-apiserver can be installed or run on the machines this project is tested on (it needs etcd,
certificates and a control plane), so this server reproduces, over plain HTTP, the protocol rules of the
real one for the resources the agent uses: Nodes (with the ``status`` subresource), NodeFeatures
(``nfd.k8s-sigs.io/v1alpha1``, a custom resource), RuntimeClasses (``node.k8s.io/v1``), Events and Pods
(read-only for the agent: it lists the GPU Operator's operand pods on its node while a MIG change waits).

Rules enforced, each as the real API server answers them:

- every object has a ``resourceVersion`` from one global counter; an update or a patch carrying a stale
  ``metadata.resourceVersion`` gets 409 Conflict; a write that changes nothing stores nothing and keeps
  the resourceVersion; custom resources refuse an update without a resourceVersion (422);
- PATCH takes ``application/merge-patch+json``, ``application/strategic-merge-patch+json`` (not for custom
  resources) and ``application/json-patch+json``; any other content type gets 415;
- label keys and values and annotation keys are validated as apimachinery does (422 Invalid with the
  field and the reason); names must be DNS subdomains; a RuntimeClass handler is a DNS label and immutable;
- Node status goes through the ``status`` subresource only: a write to the Node itself keeps the stored
  status, a write to ``nodes/status`` keeps everything but the status; conditions merge by ``type`` under a
  strategic merge patch; a condition needs a ``type`` (unique) and a ``status`` of True, False or Unknown,
  and its times must be RFC 3339; Node taints need a qualified-name ``key``, an ``effect`` of NoSchedule,
  PreferNoSchedule or NoExecute, and are unique per key and effect (the real validation's rules);
- authentication by bearer token from a kube-apiserver static token file (``token,user,uid,"g1,g2"``),
  re-read when it changes, so a rotated-out token gets 401;
- authorization by RBAC from a manifest (the project's ``container/kubernetes/rbac.yaml``), plus the node
  authorizer for ``system:node:<name>``; anything not granted gets 403 with the real message;
- list and watch with ``resourceVersion``, ``fieldSelector=metadata.name=...`` (Pods also
  ``spec.nodeName=...``), equality
  ``labelSelector``, bookmarks (``allowWatchBookmarks``) and, for a resourceVersion older than the
  retained history, an ERROR event with a 410 Expired status (a list with ``resourceVersionMatch=Exact``
  gets 410 itself);
- a per-user token-bucket rate limit answering 429 with ``Retry-After``.

HTTPS with a server certificate is optional (``--tls-cert``; kubectl sends a token only over HTTPS). Not
reproduced: client-certificate authentication, server-side apply (415), generateName, admission plugins
other than the validation above. For tests it also counts requests and writes per user
and can be made unavailable (503 with Retry-After) or compacted on demand.

Standalone: ``python -m nodeagent.testing.apiserver --port 6443 --token-file tokens.csv --node NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import csv
import json
import re
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from nodeagent.kube import validation
from nodeagent.testing import k8s_patch
from nodeagent.testing.k8s_rbac import Authorizer, Request, User, forbidden_message

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
ANNOTATIONS_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    custom: bool = False
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = (
    ResourceType("", "v1", "nodes", "Node", namespaced=False, status_subresource=True),
    ResourceType("", "v1", "events", "Event", namespaced=True),
    ResourceType("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", namespaced=False),
    ResourceType("nfd.k8s-sigs.io", "v1alpha1", "nodefeatures", "NodeFeature", namespaced=True, custom=True),
    ResourceType("", "v1", "pods", "Pod", namespaced=True),
)
CONDITION_STATUSES = ("True", "False", "Unknown")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
FIELD_SELECTORS = {"nodes": ("metadata.name",), "pods": ("metadata.name", "spec.nodeName")}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Target:
    """What a request's path names."""

    rt: ResourceType
    namespace: str
    name: str
    sub: str


BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    REASONS = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Expired",
        415: "UnsupportedMediaType",
        422: "Invalid",
        429: "TooManyRequests",
        503: "ServiceUnavailable",
    }

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str = "",
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or self.REASONS.get(code, "")
        self.details = details
        self.retry_after = retry_after

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.json_response(self.status(), status=self.code, headers=headers)


def _node_problems(node: dict[str, Any]) -> list[tuple[str, str]]:
    """The Node validation's rules for conditions and taints (field, message)."""
    causes: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, cond in enumerate((node.get("status") or {}).get("conditions") or []):
        where = f"status.conditions[{i}]"
        if not isinstance(cond, dict) or not cond.get("type"):
            causes.append((f"{where}.type", "Required value"))
            continue
        if cond["type"] in seen:
            causes.append((f"{where}.type", f'Duplicate value: "{cond["type"]}"'))
        seen.add(cond["type"])
        if cond.get("status") not in CONDITION_STATUSES:
            supported = ", ".join(f'"{v}"' for v in CONDITION_STATUSES)
            causes.append(
                (f"{where}.status", f'Unsupported value: "{cond.get("status")}": supported values: {supported}')
            )
        for key in ("lastTransitionTime", "lastHeartbeatTime"):
            if key in cond and cond[key] is not None and not RFC3339.match(str(cond[key])):
                causes.append((f"{where}.{key}", f'Invalid value: "{cond[key]}": must be RFC 3339'))
    pairs: set[tuple[str, str]] = set()
    for i, taint in enumerate((node.get("spec") or {}).get("taints") or []):
        where = f"spec.taints[{i}]"
        key = taint.get("key", "") if isinstance(taint, dict) else ""
        problems = validation.key_problems(key) if key else ["Required value"]
        causes.extend((f"{where}.key", p) for p in problems)
        effect = taint.get("effect") if isinstance(taint, dict) else None
        if effect not in TAINT_EFFECTS:
            supported = ", ".join(f'"{v}"' for v in TAINT_EFFECTS)
            causes.append((f"{where}.effect", f'Unsupported value: "{effect}": supported values: {supported}'))
        if (key, str(effect)) in pairs:
            causes.append((f"{where}", f'Duplicate value: "{key}:{effect}"'))
        pairs.add((key, str(effect)))
    return causes


def _invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 with one cause per (field, message)."""
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    return ApiError(
        422,
        f'{rt.kind} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        },
    )


# ------------------------------------------------------------------------------------------- auth


class TokenFile:
    """kube-apiserver's static token file, re-read when its modification time or size changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def lookup(self, token: str) -> User | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            self._users = parse_token_file(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = (st.st_mtime_ns, st.st_size)
        return self._users.get(token)


def parse_token_file(text: str, source: str = "token file") -> dict[str, User]:
    users: dict[str, User] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 3:
            raise ValueError(f'{source}:{lineno}: expected token,user,uid[,"group1,group2"]')
        groups = tuple(g for g in (row[3].split(",") if len(row) > 3 else []) if g)
        users[row[0]] = User(row[1], (*groups, "system:authenticated"))
    return users


class RateLimiter:
    """A token bucket per user: ``qps`` refill, ``burst`` capacity (the API server's 429 + Retry-After)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, user: str, now: float) -> float:
        """0 when admitted, else seconds until a token is available."""
        if self.qps <= 0:
            return 0.0
        tokens, last = self._buckets.get(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.qps)
        if tokens >= 1:
            self._buckets[user] = (tokens - 1, now)
            return 0.0
        self._buckets[user] = (tokens, now)
        return (1 - tokens) / self.qps


# ------------------------------------------------------------------------------------------ store


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str
    field_name: dict[str, str]
    selector: list[tuple[str, str, str | None]]
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]


@dataclass
class Counters:
    requests: Counter[str] = field(default_factory=Counter)
    """User → requests (every authenticated request, watches included)."""
    writes: Counter[str] = field(default_factory=Counter)
    """User → mutating requests (create, update, patch, delete), stored or not."""
    stored: Counter[str] = field(default_factory=Counter)
    """User → writes that changed an object."""
    by_verb: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(verb, resource) → requests."""
    write_times: list[tuple[float, str]] = field(default_factory=list)
    """(time, user) of every mutating request, for startup-spread measurements."""


def _parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    terms: list[tuple[str, str, str | None]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append(("!=", k.strip(), v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif term.startswith("!"):
            terms.append(("!", term[1:], None))
        else:
            terms.append(("exists", term, None))
    return terms


def _field_value(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _selected(obj: dict[str, Any], fields: dict[str, str], selector: list[tuple[str, str, str | None]]) -> bool:
    """``fields``: field path → wanted value (the equality field selectors the real server supports)."""
    meta = obj.get("metadata", {})
    if any(_field_value(obj, path) != value for path, value in fields.items()):
        return False
    labels = meta.get("labels") or {}
    for op, key, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


class Store:
    def __init__(self, history: int = 1000) -> None:
        self.rv = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: deque[tuple[int, str, str, dict[str, Any]]] = deque()
        self.history_size = history
        self.compacted_rv = 0
        """Events at or below this resourceVersion are gone: a watch from before it gets 410."""
        self.watchers: set[_Watcher] = set()

    def _record(self, rt: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, rt.plural, kind, obj))
        while len(self.history) > self.history_size:
            self.compacted_rv = self.history.popleft()[0]
        ns = obj["metadata"].get("namespace", "")
        for w in list(self.watchers):
            same = w.rt.plural == rt.plural and (not w.namespace or w.namespace == ns)
            if same and _selected(obj, w.field_name, w.selector):
                w.queue.put_nowait((kind, obj))

    def compact(self) -> None:
        self.history.clear()
        self.compacted_rv = self.rv

    def put(self, rt: ResourceType, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        self.objects[(rt.plural, meta.get("namespace", ""), meta["name"])] = obj
        self._record(rt, kind, copy.deepcopy(obj))
        return obj

    def delete(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.pop((rt.plural, namespace, name))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(rt, "DELETED", copy.deepcopy(obj))
        return obj

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((rt.plural, namespace, name))

    def items(self, rt: ResourceType, namespace: str) -> list[dict[str, Any]]:
        return [
            o
            for (plural, ns, _), o in sorted(self.objects.items())
            if plural == rt.plural and (not namespace or ns == namespace)
        ]


# ----------------------------------------------------------------------------------------- server


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without server-managed fields, to decide whether a write changes anything."""
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    return out


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
            discovery = self._discovery(path)
            if discovery is not None:
                return web.json_response(discovery)
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

    def _discovery(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-nodeagent-test"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = sorted({(r.group, r.version) for r in RESOURCES if r.group})
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                        "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                    }
                    for g, v in groups
                ],
            }
        parts = path.strip("/").split("/")
        if parts in (["api", "v1"],) or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            listed = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
            if not listed:
                raise ApiError(404, "the server could not find the requested resource")
            resources: list[dict[str, Any]] = []
            for r in listed:
                verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
                resources.append(
                    {
                        "name": r.plural,
                        "singularName": r.kind.lower(),
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": verbs,
                    }
                )
                if r.status_subresource:
                    resources.append(
                        {
                            "name": f"{r.plural}/status",
                            "singularName": "",
                            "namespaced": r.namespaced,
                            "kind": r.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": r.api_version,
                "resources": resources,
            }
        return None

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
        items = [o for o in self.store.items(rt, ns) if _selected(o, field_name, selector)]
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
                raise ApiError(400, f'"{key}" is not a known field selector: only "{", ".join(supported)}"')
            fields[key] = value
        return fields, _parse_selector(request.query.get("labelSelector", ""))

    async def _watch(self, request: web.Request, rt: ResourceType, ns: str) -> web.StreamResponse:
        field_name, selector = self._selectors(request, rt)
        rv_text = request.query.get("resourceVersion", "")
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(request.query.get("timeoutSeconds", "0") or 0)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        watcher = _Watcher(rt, ns, field_name, selector, queue)
        if rv_text in ("", "0"):
            for obj in self.store.items(rt, ns):
                if _selected(obj, field_name, selector):
                    await send("ADDED", obj)
        else:
            rv = int(rv_text)
            if rv < self.store.compacted_rv:
                expired = ApiError(410, f"too old resource version: {rv} ({self.store.compacted_rv})")
                await send("ERROR", expired.status())
                await response.write_eof()
                return response
            for ev_rv, plural, kind, obj in list(self.store.history):
                same = plural == rt.plural and (not ns or obj["metadata"].get("namespace") == ns)
                if ev_rv > rv and same and _selected(obj, field_name, selector):
                    await send(kind, obj)
        self.store.watchers.add(watcher)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        try:
            while not self._stopping.is_set():
                wait = self.bookmark_interval_s if bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    if bookmarks and (deadline is None or time.monotonic() < deadline):
                        meta = {"resourceVersion": str(self.store.rv)}
                        await send("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})
                    continue
                if item is None:
                    break
                await send(*item)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.watchers.discard(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    # ---- writes

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except ValueError as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from err

    def _check_identity(self, rt: ResourceType, ns: str, name: str, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if obj.get("kind", rt.kind) != rt.kind or obj.get("apiVersion", rt.api_version) != rt.api_version:
            raise ApiError(
                400, f"the body is a {obj.get('apiVersion')}/{obj.get('kind')}, not {rt.api_version}/{rt.kind}"
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if name and meta.get("name", name) != name:
            raise ApiError(
                400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace", ns) != ns:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        return obj

    def _validate(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[tuple[str, str]] = []
        if not name:
            causes.append(("metadata.name", "Required value: name or generateName is required"))
        elif rt.plural != "events" and not validation.is_dns1123_subdomain(name):
            causes.append(
                (
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist'
                    " of lower case alphanumeric characters, '-' or '.'",
                )
            )
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str):
                causes.append((f"metadata.labels.{key}", "Invalid value: label values must be strings"))
                continue
            for problem in validation.key_problems(key):
                causes.append(("metadata.labels", f'Invalid value: "{key}": {problem}'))
            for problem in validation.value_problems(value):
                causes.append(("metadata.labels", f'Invalid value: "{value}": {problem}'))
        annotations = meta.get("annotations") or {}
        for key in annotations:
            for problem in validation.key_problems(key):
                causes.append(("metadata.annotations", f'Invalid value: "{key}": {problem}'))
        if sum(len(k) + len(str(v)) for k, v in annotations.items()) > ANNOTATIONS_MAX_BYTES:
            causes.append(("metadata.annotations", f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"))
        if rt.plural == "runtimeclasses":
            handler = obj.get("handler")
            if not isinstance(handler, str) or not handler:
                causes.append(("handler", "Required value"))
            elif len(handler) > 63 or not validation.is_dns1123_subdomain(handler) or "." in handler:
                causes.append(
                    (
                        "handler",
                        f'Invalid value: "{handler}": a lowercase RFC 1123 label must consist of'
                        " lower case alphanumeric characters or '-'",
                    )
                )
            elif old is not None and old.get("handler") != handler:
                causes.append(("handler", f'Invalid value: "{handler}": field is immutable'))
        if rt.plural == "nodes":
            causes.extend(_node_problems(obj))
        if rt.plural == "nodefeatures":
            labels = (obj.get("spec") or {}).get("labels") or {}
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                causes.append(("spec.labels", "Invalid value: must be a map of strings"))
        if causes:
            raise _invalid(rt, name, causes)

    def _create(self, rt: ResourceType, ns: str, body: Any) -> dict[str, Any]:
        obj = self._check_identity(rt, ns, "", body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise ApiError(400, "resourceVersion should not be set on objects to be created")
        self._validate(rt, obj, None)
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
            if sub == "status":
                new = {**copy.deepcopy(old), "status": new.get("status", {})}
            else:
                new["status"] = copy.deepcopy(old.get("status", {}))
        self._validate(rt, new, old)
        meta = new["metadata"]
        meta["generation"] = old_meta.get("generation", 1) + (1 if new.get("spec") != old.get("spec") else 0)
        if _strip(new) == _strip(old):
            return old
        self.counters.stored[user.name] += 1
        return self.store.put(rt, new, "MODIFIED")

    def _update(self, target: Target, body: Any, user: User) -> dict[str, Any]:
        rt, ns, name = target.rt, target.namespace, target.name
        old = self._existing(rt, ns, name)
        obj = self._check_identity(rt, ns, name, body)
        rv = obj["metadata"].get("resourceVersion")
        if not rv and rt.custom:
            raise _invalid(
                rt, name, [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")]
            )
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        return self._store_update(target, old, obj, user)

    async def _patch(self, request: web.Request, target: Target, user: User) -> dict[str, Any]:
        rt, ns, name = target.rt, target.namespace, target.name
        content_type = request.content_type
        allowed = [MERGE_PATCH, JSON_PATCH] + ([] if rt.custom else [STRATEGIC_MERGE_PATCH])
        if content_type not in allowed:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(allowed)}",
            )
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
        patched = self._check_identity(rt, ns, name, patched)
        if patched["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        return self._store_update(target, old, patched, user)


# ------------------------------------------------------------------------------------- standalone


def write_kubeconfig(
    path: str | Path, server: str, token: str, namespace: str = "nodeagent", ca_pem: bytes | None = None
) -> None:
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "nodeagent", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "nodeagent", "namespace": namespace}}],
        "current-context": "test",
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def default_rbac_path() -> Path | None:
    """The project's RBAC manifest when running from a checkout."""
    candidate = Path(__file__).resolve().parents[2] / "container" / "kubernetes" / "rbac.yaml"
    return candidate if candidate.is_file() else None


async def run_standalone(args: argparse.Namespace) -> None:
    rbac = args.rbac or default_rbac_path()
    server = TestApiServer(
        token_file=args.token_file,
        rbac=rbac,
        qps=args.qps,
        burst=args.burst,
        bookmark_interval_s=args.bookmark_interval,
    )
    for node in args.node:
        server.add_node(node)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key or None)
    url = await server.start(args.host, args.port, tls=tls)
    if args.kubeconfig_out:
        users = parse_token_file(Path(args.token_file).read_text(encoding="utf-8"), args.token_file)
        token = next(iter(users), "")
        ca = Path(args.tls_cert).read_bytes() if args.tls_cert else None
        write_kubeconfig(args.kubeconfig_out, url, token, ca_pem=ca)
    print(f"test API server on {url} (rbac {rbac or 'none'}, nodes {', '.join(args.node) or 'none'})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.testing.apiserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--token-file", required=True, help='static token file: token,user,uid,"group1,group2"')
    parser.add_argument("--rbac", default=None, help="RBAC manifest (default: the project's rbac.yaml)")
    parser.add_argument("--node", action="append", default=[], help="create this Node at start (repeatable)")
    parser.add_argument("--qps", type=float, default=0.0, help="per-user rate limit (0: none)")
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="its private key (PEM)")
    parser.add_argument("--kubeconfig-out", default="", help="write a kubeconfig for the first token here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not Path(args.token_file).exists():
        parser.error(f"--token-file {args.token_file}: no such file")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_standalone(args))


if __name__ == "__main__":
    main()
