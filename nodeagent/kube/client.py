"""A thin asyncio Kubernetes client over aiohttp, with one request funnel for every call.

The funnel (``KubeClient.request``) gives every call the same behaviour:

- a timeout per attempt; connection errors and timeouts retried with exponential backoff and full
  jitter, up to ``max_attempts``;
- 429 and 503 retried after the server's ``Retry-After`` (capped), other 5xx with backoff;
- 401 retried once (the token file may have just rotated; the next attempt re-reads it), then
  ``Unauthorized``;
- 403 raised as ``Forbidden`` naming the verb, resource and namespace the RBAC rules lack;
- 404, 409, 410, 422 raised as their own errors; ``modify`` turns 409 into a fresh read and a retry.

``watch`` streams events from a resourceVersion with bookmarks; a 410 (too old) ends it with ``Gone`` so
the caller relists (``watch_object`` does that). aiohttp is already the agent's HTTP library; lightkube
was measured against this client (see the labels note) and not taken.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nodeagent.errors import NodeAgentError
from nodeagent.kube.credentials import Credentials
from nodeagent.kube.resources import Resource

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeError(NodeAgentError):
    def __init__(self, message: str, *, code: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class Unreachable(KubeError):
    """No answer from the API server (connection refused, timeout, 5xx) after every attempt."""


class Unauthorized(KubeError):
    """401: the credentials are unknown or expired."""


class Forbidden(KubeError):
    """403: the RBAC rules do not grant the request; the message names verb, resource and namespace."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Gone(KubeError):
    """410: the resourceVersion is older than the server keeps; relist."""


class Invalid(KubeError):
    """422: the server rejected the object's content."""


_ERRORS: dict[int, type[KubeError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
}


@dataclass
class FunnelSettings:
    timeout_s: float = 10.0
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0
    conflict_retries: int = 5


@dataclass
class ClientStats:
    requests: int = 0
    writes: int = 0
    retries: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def describe(verb: str, resource: Resource, namespace: str = "", name: str = "") -> str:
    """``patch nodes "node-a" at the cluster scope``: what a request asked, for errors."""
    what = f"{resource.plural}{'.' + resource.group if resource.group else ''}"
    target = f'{what} "{name}"' if name else what
    scope = f'in namespace "{namespace}"' if namespace else "at the cluster scope"
    return f"{verb} {target} {scope}"


@dataclass(frozen=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK."""
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


class KubeClient:
    def __init__(
        self,
        credentials: Credentials,
        *,
        settings: FunnelSettings | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        user_agent: str = "nodeagent",
    ) -> None:
        self.credentials = credentials
        self.settings = settings or FunnelSettings()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = user_agent
        self.stats = ClientStats()

    @property
    def namespace(self) -> str:
        return self.credentials.namespace

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4),
                headers={"User-Agent": self._user_agent, "Accept": "application/json"},
            )
        return self._session

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2**attempt)
        return self._rng.uniform(0, cap)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {}
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    # ------------------------------------------------------------------------------------- the funnel

    async def request(
        self,
        method: str,
        resource: Resource,
        *,
        verb: str,
        name: str = "",
        namespace: str = "",
        subresource: str = "",
        body: Any = None,
        content_type: str | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        path = resource.path(name, namespace, subresource)
        what = describe(verb, resource, namespace, name) + (f" ({subresource})" if subresource else "")
        data = json.dumps(body).encode() if body is not None else None
        if data is not None and content_type is None:
            content_type = "application/json"
        last_problem = ""
        unauthorized_seen = False
        for attempt in range(self.settings.max_attempts):
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            if method != "GET":
                self.stats.writes += 1
            try:
                status, payload, retry_after = await self._once(method, path, data, content_type, query)
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                last_problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                await self._sleep(self._backoff(attempt))
                continue
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            if status < 300:
                return payload if isinstance(payload, dict) else {}
            message = str(payload.get("message", "")) if isinstance(payload, dict) else ""
            reason = str(payload.get("reason", "")) if isinstance(payload, dict) else ""
            if status in (429, 503) or status >= 500:
                last_problem = f"HTTP {status} {reason}".strip()
                wait = self._backoff(attempt)
                if retry_after is not None and status in (429, 503):
                    wait = min(retry_after, self.settings.retry_after_max_s)
                await self._sleep(wait)
                continue
            if status == 401 and not unauthorized_seen:
                unauthorized_seen = True  # the token may have rotated just now: the next attempt re-reads it
                continue
            if status == 403:
                raise Forbidden(
                    f"{what}: forbidden; the RBAC rules do not grant {verb} on {resource.plural}"
                    + (f" in namespace {namespace}" if namespace else "")
                    + f" ({message})",
                    code=403,
                    reason=reason,
                )
            error = _ERRORS.get(status, KubeError)
            raise error(f"{what}: HTTP {status} {reason}: {message}".rstrip(": "), code=status, reason=reason)
        raise Unreachable(
            f"{what}: no answer from {self.credentials.server} after {self.settings.max_attempts} attempts"
            f" ({last_problem})",
            code=0,
        )

    async def _once(
        self, method: str, path: str, data: bytes | None, content_type: str | None, query: dict[str, str] | None
    ) -> tuple[int, Any, float | None]:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with self._session_now().request(
            method,
            self.credentials.server + path,
            data=data,
            params=query,
            headers=self._headers(content_type),
            ssl=self.credentials.ssl_context(),
            timeout=timeout,
        ) as resp:
            text = await resp.read()
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text[:200].decode("utf-8", "replace")}
            retry_after = None
            if "Retry-After" in resp.headers:
                try:
                    retry_after = float(resp.headers["Retry-After"])
                except ValueError:
                    retry_after = None
            return resp.status, payload, retry_after

    # ------------------------------------------------------------------------------------- verbs

    async def get(self, resource: Resource, name: str, namespace: str = "") -> dict[str, Any]:
        return await self.request("GET", resource, verb="get", name=name, namespace=namespace)

    async def get_or_none(self, resource: Resource, name: str, namespace: str = "") -> dict[str, Any] | None:
        try:
            return await self.get(resource, name, namespace)
        except NotFound:
            return None

    async def list(self, resource: Resource, namespace: str = "", **query: str) -> dict[str, Any]:
        return await self.request("GET", resource, verb="list", namespace=namespace, query=query or None)

    async def create(self, resource: Resource, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        return await self.request("POST", resource, verb="create", namespace=namespace, body=body)

    async def replace(self, resource: Resource, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        name = body["metadata"]["name"]
        return await self.request("PUT", resource, verb="update", name=name, namespace=namespace, body=body)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str = "",
        content_type: str = MERGE_PATCH,
        subresource: str = "",
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            resource,
            verb="patch",
            name=name,
            namespace=namespace,
            subresource=subresource,
            body=patch,
            content_type=content_type,
        )

    async def delete(self, resource: Resource, name: str, namespace: str = "") -> dict[str, Any]:
        return await self.request("DELETE", resource, verb="delete", name=name, namespace=namespace)

    async def modify(
        self,
        resource: Resource,
        name: str,
        mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
        namespace: str = "",
    ) -> dict[str, Any]:
        """Read, mutate, update with the read's resourceVersion; on 409 read again and retry.
        ``mutate`` returns None when the object is already as wanted (then nothing is written)."""
        for _ in range(self.settings.conflict_retries):
            current = await self.get(resource, name, namespace)
            wanted = mutate(current)
            if wanted is None:
                return current
            try:
                return await self.replace(resource, wanted, namespace)
            except Conflict:
                continue
        raise Conflict(
            f"{describe('update', resource, namespace, name)}: still conflicting after "
            f"{self.settings.conflict_retries} fresh reads",
            code=409,
        )

    # ------------------------------------------------------------------------------------- watches

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        namespace: str = "",
        name: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` (bookmarks included) until the server ends the stream.
        Raises ``Gone`` when the version is too old; the other errors as ``request`` does."""
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_s),
        }
        if name:
            query["fieldSelector"] = f"metadata.name={name}"
        self.stats.requests += 1
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.timeout_s, sock_read=timeout_s + self.settings.timeout_s
        )
        what = describe("watch", resource, namespace, name)
        try:
            async with self._session_now().get(
                self.credentials.server + resource.path("", namespace),
                params=query,
                headers=self._headers(None),
                ssl=self.credentials.ssl_context(),
                timeout=timeout,
            ) as resp:
                if resp.status >= 300:
                    text = await resp.read()
                    payload = json.loads(text) if text.startswith(b"{") else {}
                    error = _ERRORS.get(resp.status, KubeError)
                    raise error(f"{what}: HTTP {resp.status} {payload.get('message', '')}", code=resp.status)
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type", ""), event.get("object", {})
                    if kind == "ERROR":
                        code = int(obj.get("code", 0))
                        error = _ERRORS.get(code, KubeError)
                        raise error(f"{what}: {obj.get('message', 'watch error')}", code=code)
                    yield WatchEvent(kind, obj)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise Unreachable(f"{what}: {type(err).__name__}: {err}", code=0) from err

    async def watch_object(
        self, resource: Resource, name: str, namespace: str = "", *, timeout_s: int = 300
    ) -> AsyncIterator[dict[str, Any] | None]:
        """The object's state now, then every change (None while it does not exist). Relists on 410,
        resumes from the last bookmark otherwise; errors other than Gone end the iteration. Each watch
        lasts between ``timeout_s`` and twice that (random, as client-go's reflector does), so a fleet's
        watches do not all end together."""
        resource_version = ""
        while True:
            if not resource_version:
                listed = await self.list(resource, namespace, fieldSelector=f"metadata.name={name}")
                items = listed.get("items") or []
                yield items[0] if items else None
                resource_version = str(listed.get("metadata", {}).get("resourceVersion", ""))
            try:
                async for event in self.watch(
                    resource,
                    resource_version=resource_version,
                    namespace=namespace,
                    name=name,
                    timeout_s=int(self._rng.uniform(timeout_s, 2 * timeout_s)),
                ):
                    resource_version = event.resource_version or resource_version
                    if event.type == "BOOKMARK":
                        continue
                    yield None if event.type == "DELETED" else event.object
            except Gone:
                resource_version = ""
