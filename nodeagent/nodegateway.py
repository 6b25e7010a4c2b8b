"""The Node gateway: the agent's one Kubernetes client, its one watch of its own Node, and the one writer of it.

Subsystems (labels, mig, gpuhealth, the device plugin, the DRA plugin) never build a
client or watch the Node themselves; they get this from ``Context.node``:

- ``client()``: the client (built on first use from the ``kube`` settings; None with ``problem`` saying why:
  Kubernetes off, or a kubeconfig not there yet, tried again on the next call). ``use`` wires one (tests).
- ``get()``: a fresh read of the Node. ``observe()``: the Node now, then every change (None while it does not
  exist), from the one watch (resourceVersion, bookmarks, relist on 410, backoff on errors). The watch runs
  while someone observes, as a named task; a crash restarts it with backoff, and ``watch_status`` says so.
- ``patch(make)``, ``set_labels``, ``set_annotations``, ``set_condition``, ``remove_conditions``, ``set_taint``:
  every write of the Node goes through one lock, so two writers never interleave a read-modify-write; each
  patch is computed from the Node (with its resourceVersion) and recomputed from a fresh read on 409.
- ``publish_resource_slices``: the node's ResourceSlices of a DRA driver, written only when they differ
  (the pool's generation bumped); ``read``: one object (a ResourceClaim) through the same client.
- ``record_event``: a Kubernetes Event about the Node, through the one ``EventRecorder`` (built for the
  client in use, so a repeat from any subsystem counts up the same Event), best effort.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog

from nodeagent import aio
from nodeagent.errors import ConfigError
from nodeagent.kube import nodepatch, resourceslices
from nodeagent.kube.client import MERGE_PATCH, STRATEGIC_MERGE_PATCH, Conflict, KubeClient, KubeError, NotFound
from nodeagent.kube.events import EventRecorder
from nodeagent.kube.resources import NODES, RESOURCESLICES, Resource
from nodeagent.kube.resourceslices import SliceWrites
from nodeagent.settings import KubeSettings

log = structlog.get_logger(__name__)

Node = dict[str, Any]
MakePatch = Callable[[Node], "dict[str, Any] | None"]
CONFLICT_RETRIES = 3
WATCH_TASK = "node-gateway.watch"


class NoKubernetes(KubeError):
    """There is no client: Kubernetes is off, or the client cannot be built yet (the message says which)."""


class NodeGateway:
    watch_timeout_s = 300
    """Shortest watch (each lasts up to twice this); the fleet benchmark shortens it."""
    retry_max_s = 30.0
    """Longest backoff between failed watches."""

    def __init__(
        self,
        node_name: str,
        connect: Callable[[KubeSettings], KubeClient | None],
        settings: Callable[[], KubeSettings] = KubeSettings,
    ) -> None:
        """``connect(settings())`` builds the client from the ``kube`` settings in effect (raises ConfigError or
        OSError while it cannot yet, returns None when Kubernetes is off). When ``settings()`` changes (a
        reload), the next ``client()`` builds a new client and the watch moves to it."""
        self.node_name = node_name
        self._connect = connect
        self._settings = settings
        self._built_for: KubeSettings | None = None
        self._client: KubeClient | None = None
        self._made = False
        self.problem = ""
        """Why there is no client ('' when there is one)."""
        self.node: Node | None = None
        """The Node as the watch saw it last (None: absent, or not watched yet)."""
        self.uid = ""
        """The Node's uid, from the last read, write or watch event that showed it ('' until then)."""
        self._recorder: EventRecorder | None = None
        self._version = 0
        self._watch_from = 0
        self._changed = asyncio.Event()
        self._observers = 0
        self._watch: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._rng = random.Random()
        self.watch_failures = 0
        self.watch_restarts = 0
        self.watch_error = ""
        self.watch_crash = ""
        """The last crash the supervisor restarted the watch after (kept after it recovered)."""

    # ------------------------------------------------------------------------------------------ client

    def client(self) -> KubeClient | None:
        wanted = self._settings()
        if self._made and wanted != self._built_for:
            self._reconnect()
        if not self._made:
            try:
                self._client = self._connect(wanted)
                self._made, self._built_for = True, wanted
                self.problem = (
                    ""
                    if self._client is not None
                    else "no API server configured (kube.mode is off, or auto outside a pod)"
                )
            except (ConfigError, OSError) as err:
                self.problem = f"cannot build the Kubernetes client: {err}"
        return self._client

    def _reconnect(self) -> None:
        old, self._client, self._made = self._client, None, False
        if old is not None:
            aio.guarded_task(old.close(), name="node-gateway.close-old-client")
        if self._watch is not None:  # the watch loop picks the new client up at once
            self._watch.cancel()
            self._start_watch()
        log.info("kube_settings_changed", node=self.node_name)

    def use(self, client: KubeClient | None) -> None:
        """Use this client from now on (a test wires a real or a test API server)."""
        self._client, self._made, self._built_for = client, True, self._settings()
        self.problem = "" if client is not None else "no Kubernetes client given"

    @property
    def settled(self) -> bool:
        """True once a client was built or Kubernetes found off (False while a kubeconfig is awaited)."""
        return self._made

    def _need(self) -> KubeClient:
        client = self.client()
        if client is None:
            raise NoKubernetes(self.problem or "no Kubernetes client")
        return client

    async def close(self) -> None:
        if self._watch is not None:
            await aio.cancel_and_wait([self._watch], timeout_s=2.0)
            self._watch = None
        if self._client is not None:
            await self._client.close()

    # ----------------------------------------------------------------------------------------- reading

    async def get(self) -> Node:
        """A fresh read of the Node (NotFound when it does not exist)."""
        return self._seen(await self._need().get(NODES, self.node_name))

    def _seen(self, node: Node) -> Node:
        uid = (node.get("metadata") or {}).get("uid")
        if uid:
            self.uid = str(uid)
        return node

    @contextlib.asynccontextmanager
    async def observe(self) -> AsyncIterator[AsyncIterator[Node | None]]:
        """``async with gateway.observe() as changes: async for node in changes``: the Node as the watch sees
        it first, then after every change (coalesced: a slow observer gets the latest, never a backlog), and
        the last one seen again when the watch fails (``watch_status()`` says why)."""
        self._observers += 1
        if self._watch is None or self._watch.done():
            self._start_watch()
        try:
            yield self._changes()
        finally:
            self._observers -= 1
            if self._observers == 0 and self._watch is not None:
                await aio.cancel_and_wait([self._watch], timeout_s=2.0)
                self._watch = None

    def _start_watch(self) -> None:
        self._watch_from = self._version  # observers wait for this watch's first view, not an older one
        self._watch = aio.guarded_task(self._supervise(), name=WATCH_TASK)

    async def _changes(self) -> AsyncIterator[Node | None]:
        seen = self._watch_from
        while True:
            while self._version == seen:
                await self._changed.wait()
            seen = self._version
            yield self.node

    def _publish(self, node: Node | None) -> None:
        self.node = node if node is None else self._seen(node)
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def watch_status(self) -> dict[str, Any]:
        """For /status: whether the watch runs, its API failures in a row and the last one, restarts after a
        crash and the last crash."""
        return {
            "watching": self._watch is not None and not self._watch.done(),
            "failures": self.watch_failures,
            "error": self.watch_error,
            "restarts": self.watch_restarts,
            "crash": self.watch_crash,
        }

    def _backoff(self, failures: int) -> float:
        cap = min(self.retry_max_s, 2.0 * 2 ** min(failures, 10))
        return self._rng.uniform(cap / 2, cap)

    async def _supervise(self) -> None:
        """Run the watch; a crash (a bug, not an API error) is logged and the watch restarted with backoff."""
        while True:
            try:
                await self._watch_node()
                return
            except Exception as err:
                self.watch_restarts += 1
                self.watch_crash = repr(err)
                log.error("node_watch_crashed", error=repr(err), restarts=self.watch_restarts)
                await asyncio.sleep(self._backoff(self.watch_restarts))

    async def _watch_node(self) -> None:
        while True:
            client = self.client()
            if client is None:
                if self._made:
                    return  # Kubernetes is off
                await asyncio.sleep(self._backoff(self.watch_failures))  # a kubeconfig is awaited
                continue
            try:
                async for node in client.watch_object(NODES, self.node_name, timeout_s=self.watch_timeout_s):
                    self.watch_failures, self.watch_error = 0, ""
                    self._publish(node)
            except KubeError as err:
                self.watch_failures += 1
                self.watch_error = str(err)
                log.debug("node_watch_failed", error=str(err), failures=self.watch_failures)
                self._publish(self.node)  # observers look at watch_status(): the API server may be gone
            await asyncio.sleep(self._backoff(self.watch_failures))

    # ----------------------------------------------------------------------------------------- writing

    async def patch(
        self,
        make: MakePatch,
        *,
        node: Node | None = None,
        first: dict[str, Any] | None = None,
        status: bool = False,
    ) -> tuple[Node, bool]:
        """Patch the Node with ``make(node)``: from ``node`` when given (a read the caller just made), else a
        fresh read; on 409 read again and remake. ``first``: a patch the caller already made from its own read
        (with that read's resourceVersion), sent as the first attempt without a read. ``status``: a strategic
        merge patch of ``nodes/status``. Returns the Node after and whether anything was written. Serialised
        with every other write."""
        client = self._need()
        content_type = STRATEGIC_MERGE_PATCH if status else MERGE_PATCH
        async with self._write_lock:
            current: Node | None = node
            if node is None and first is None:
                current = await client.get(NODES, self.node_name)
            for attempt in range(CONFLICT_RETRIES):
                patch = first if attempt == 0 and first is not None else make(current or {})
                if patch is None:
                    return current or {}, False
                try:
                    after = await client.patch(
                        NODES, self.node_name, patch, content_type=content_type, subresource="status" if status else ""
                    )
                    return self._seen(after), True
                except Conflict:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
                    current = await client.get(NODES, self.node_name)
        return current or {}, False

    async def set_labels(self, changes: Mapping[str, str | None], *, node: Node | None = None) -> bool:
        """Set (``None``: remove) these labels; True when something was written."""
        return (await self.patch(lambda n: nodepatch.label_patch(n, changes), node=node))[1]

    async def set_annotations(self, changes: Mapping[str, str | None], *, node: Node | None = None) -> bool:
        return (await self.patch(lambda n: nodepatch.annotation_patch(n, changes), node=node))[1]

    async def set_condition(
        self, cond_type: str, status: str, reason: str, message: str, *, node: Node | None = None
    ) -> bool:
        """Set one Node condition through ``nodes/status``; ``lastTransitionTime`` moves only with the status."""
        now = time.time()
        make = lambda n: nodepatch.condition_patch(n, cond_type, status, reason, message, now=now)  # noqa: E731
        return (await self.patch(make, node=node, status=True))[1]

    async def remove_conditions(self, types: Iterable[str], *, node: Node | None = None) -> bool:
        wanted = tuple(types)
        return (await self.patch(lambda n: nodepatch.remove_conditions_patch(n, wanted), node=node, status=True))[1]

    async def set_taint(
        self, key: str, effect: str, *, present: bool, value: str = "true", node: Node | None = None
    ) -> bool:
        make = lambda n: nodepatch.taint_patch(n, key, effect, present=present, value=value)  # noqa: E731
        return (await self.patch(make, node=node))[1]

    # ------------------------------------------------------------------------------- resource slices

    async def publish_resource_slices(
        self, driver: str, devices: Sequence[Mapping[str, Any]], counter_sets: Sequence[Mapping[str, Any]] = ()
    ) -> SliceWrites:
        """Make this node's ResourceSlices of ``driver`` list ``devices`` (``resource.k8s.io/v1`` device objects)
        and the ``counter_sets`` (``sharedCounters``) they consume, each set in the slice of its consumers:
        listed first, written only when they differ (``kube/resourceslices.py`` plans it, the pool's generation
        bumped), owned by the Node so they go with it. Returns what was written (``empty``: nothing). On a 409
        (another writer) it lists again and replans. Serialised with the other writes of this gateway."""
        client = self._need()
        selector = f"spec.nodeName={self.node_name},spec.driver={driver}"
        async with self._write_lock:
            if not self.uid:
                with contextlib.suppress(KubeError):
                    self._seen(await client.get(NODES, self.node_name))
            for attempt in range(CONFLICT_RETRIES):
                listed = await client.list(RESOURCESLICES, fieldSelector=selector)
                writes = resourceslices.plan(
                    listed.get("items") or [],
                    node=self.node_name,
                    node_uid=self.uid,
                    driver=driver,
                    devices=devices,
                    counter_sets=counter_sets,
                )
                try:
                    for body in writes.upserts:
                        if body["metadata"].get("resourceVersion"):
                            await client.replace(RESOURCESLICES, body)
                        else:
                            await client.create(RESOURCESLICES, body)
                    for name in writes.deletes:
                        with contextlib.suppress(NotFound):
                            await client.delete(RESOURCESLICES, name)
                    return writes
                except Conflict:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
        return SliceWrites(0)

    async def remove_resource_slices(self, driver: str) -> int:
        """Delete this node's ResourceSlices of ``driver``; how many there were."""
        return len((await self.publish_resource_slices(driver, ())).deletes)

    async def read(self, resource: Resource, name: str, namespace: str = "") -> dict[str, Any] | None:
        """One object through the gateway's client (None when it does not exist), e.g. a ResourceClaim."""
        return await self._need().get_or_none(resource, name, namespace)

    # ------------------------------------------------------------------------------------------ events

    async def record_event(self, kind: str, reason: str, message: str) -> str | None:
        """A Kubernetes Event about the Node (``kind`` Normal or Warning), best effort: returns the problem when
        it was not written (no client, refused), never raises."""
        client = self.client()
        if client is None:
            return self.problem or "no Kubernetes client"
        if self._recorder is None or self._recorder.client is not client:
            self._recorder = EventRecorder(client, self.node_name)
        return await self._recorder.record(kind, reason, message, node_uid=self.uid)
