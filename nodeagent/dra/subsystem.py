"""The ``dra`` subsystem: the node's GPUs and MIG devices allocatable through Dynamic Resource Allocation as
driver ``gpu.nvidia.com``, compatible with NVIDIA's DRA driver (its device names, attributes, DeviceClasses).

- Publishes the node's ResourceSlices (``devices.py`` plans the devices; the Node gateway writes them only
  when they differ, the pool's generation bumped) at start and on every inventory or MIG change.
- Serves ``DRAPlugin`` v1/v1beta1 on ``<kubelet.root_dir>/plugins/gpu.nvidia.com/dra.sock`` and
  ``Registration`` on ``<kubelet.root_dir>/plugins_registry/gpu.nvidia.com-reg.sock`` (the kubelet's plugin
  watcher finds it; ``backends/dra_server.py``); serves again when a socket is deleted.
- Serves the kubelet's ``DRAResourceHealth`` stream on the same dra.sock: every device's health from the same
  health book as the taints (``resource_health.py``), at once on a change and every ``dra.health_resend_s``.
- NodePrepareResources, per claim: reads the ResourceClaim's allocation (``claims.py``), writes a transient CDI
  spec naming exactly its devices (``claimspec.py``, from the agent's own spec), records the claim in the
  checkpoint (``checkpoint.py``, atomic) and answers the CDI device IDs; a claim already prepared gets the
  same answer. NodeUnprepareResources removes spec and record. Every claim gets an answer (an error of its
  own when it fails). At start the checkpoint rebuilds the specs of prepared claims that are missing.
- With ``dra.dynamic_mig``, MIG-enabled GPUs are published as partitionable devices (``partitions.py``: a
  counter set per GPU, a device per placement); preparing one creates its GPU instance, unpreparing destroys
  it (``miginstances.py``), the checkpoint recording it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from nodeagent import events
from nodeagent.aio import cancel_and_join, run_blocking, until_stopped
from nodeagent.backends.dra_health_server import HealthFeed
from nodeagent.backends.dra_server import (
    DRA_SOCKET,
    ClaimRef,
    DraPluginServer,
    PreparedDevice,
    PrepareResult,
    RegistrationServer,
)
from nodeagent.dra import checkpoint, claims, claimspec, devices, health, partitions, resource_health
from nodeagent.dra.declaration import DECLARATION
from nodeagent.dra.miginstances import DynamicMig
from nodeagent.errors import BackendUnavailable, ConfigError, HostPathError, NodeAgentError
from nodeagent.gpuhealth.book import HealthBook, Key, Verdicts
from nodeagent.kube.client import KubeError
from nodeagent.kube.resources import RESOURCECLAIMS
from nodeagent.model.gpu import GpuHealthState, Inventory, XidEvent
from nodeagent.plan import Plan
from nodeagent.subsystem import BaseSubsystem, Context, Phase

DRIVER = devices.DRIVER
RECHECK_S = 10.0
"""How often sockets are checked and failed work retried without an event."""
PUBLISH_S = 60.0
"""How often the slices are listed again without an inventory change or a registration (the kubelet deletes a
driver's slices 30 s after its plugin goes, and all of them when it starts); a list, no write when unchanged."""


class DraSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ctx)
        s = self.ctx.settings
        self.clock = clock
        self.health = HealthBook(
            window_s=s.gpuhealth.xid_window_s,
            ignored=tuple(s.gpuhealth.ignored_xids),
            hold_base_s=s.gpuhealth.min_publish_interval_s,
        )
        self._health_wait: float | None = None
        self._verdicts = Verdicts({}, {}, None)
        self._taint_added: dict[tuple[str, str, str], str] = {}
        self._taint_values: dict[Key, str] = {}
        root_dir = s.kubelet.root_dir.rstrip("/")
        self.registry_dir = f"{root_dir}/plugins_registry"
        self.plugin_dir = f"{root_dir}/plugins/{DRIVER}"
        self.checkpoint_path = f"{self.plugin_dir}/checkpoint.json"
        self.node_spec_path = s.cdi.spec_path
        self.cdi_dir = str(PurePosixPath(s.cdi.spec_path).parent)
        self.pool = self.ctx.node.node_name
        self.inventory: Inventory | None = None
        self.published: tuple[devices.PublishedDevice, ...] = ()
        self.counter_sets: tuple[partitions.CounterSet, ...] = ()
        self.mig = DynamicMig(ctx, node_spec_path=self.node_spec_path, names_uuid=self._spec_names)
        self.prepared: dict[str, checkpoint.PreparedClaim] = {}
        self.server = DraPluginServer(self.ctx.root, self.plugin_dir, self, HealthFeed(s.dra.health_resend_s))
        self.registration = RegistrationServer(
            self.ctx.root,
            self.registry_dir,
            driver=DRIVER,
            endpoint=f"{self.plugin_dir}/{DRA_SOCKET}",
            on_status=self._registration_status,
        )
        self.slice_writes = 0
        self.generation: int | None = None
        self.problems: dict[str, str] = {}
        self._spec_cache: tuple[tuple[int, int, int] | None, Mapping[str, Any]] | None = None
        self.waiting = ""
        """Why it is not registered yet without anything being wrong (no kubelet yet)."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._publish_due = True
        self._retaint_due = False

    # ---------------------------------------------------------------------------------- devices

    async def _pcie_roots(self, inventory: Inventory) -> dict[str, str]:
        def read() -> dict[str, str]:
            found = {}
            for gpu in inventory.gpus:
                path = f"/sys/bus/pci/devices/{devices.pci_address(gpu.pci_bus_id)}"
                try:
                    target = str(self.ctx.root.resolve(path, follow_last=False).readlink())
                except (OSError, HostPathError):
                    continue
                root = next((p for p in PurePosixPath(target).parts if p.startswith("pci")), "")
                if root:
                    found[gpu.pci_bus_id] = root
            return found

        return await run_blocking(read)

    async def replan(self) -> None:
        if self.inventory is None:
            self.published = ()
            return
        chosen = self.ctx.settings.dra.gpus
        ours = self.inventory.split(chosen)[0] if chosen else self.inventory
        unknown = sorted(set(chosen) - {str(g.index) for g in ours.gpus} - {g.uuid for g in ours.gpus})
        if unknown:
            self.problems["gpus"] = f"dra.gpus names no GPU of this node: {', '.join(unknown)}"
        else:
            self.problems.pop("gpus", None)
        roots = await self._pcie_roots(ours)
        if self.ctx.settings.dra.dynamic_mig:
            publication = partitions.plan(ours, roots, self.mig.owned(self.prepared))
            planned, self.counter_sets = publication.devices, publication.counter_sets
        else:
            planned, self.counter_sets = devices.plan(ours, roots), ()
        self.published = self._tainted(planned)

    def _tainted(self, planned: tuple[devices.PublishedDevice, ...]) -> tuple[devices.PublishedDevice, ...]:
        """The devices with the health book's taints now (``health.py``)."""
        verdicts = self.health.evaluate(sorted({d.gpu_index for d in planned}), self.clock())
        self._verdicts = verdicts
        self._health_wait = verdicts.wait_s
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return health.apply(planned, verdicts, now=now, added=self._taint_added, last=self._taint_values)

    def retaint(self) -> bool:
        """The taints again (an XID, a GPU state, a window or hold ended); True when any changed."""
        before = [d.taints for d in self.published]
        self.published = self._tainted(self.published)
        return [d.taints for d in self.published] != before

    def feed_health(self) -> None:
        """The health stream's list: every published device's health from the last verdicts (a change goes to
        the kubelet at once)."""
        now = int(time.time())
        self.server.health.update(resource_health.report(self.published, self._verdicts, pool=self.pool, now=now))

    async def publish(self) -> None:
        """The ResourceSlices for the devices now (nothing written when they already say so)."""
        if self.ctx.node.client() is None:
            self.problems["slices"] = f"no ResourceSlices without Kubernetes: {self.ctx.node.problem}"
            return
        try:
            writes = await self.ctx.node.publish_resource_slices(
                DRIVER, [d.api() for d in self.published], [c.api() for c in self.counter_sets]
            )
        except (KubeError, NodeAgentError) as err:
            self.problems["slices"] = f"ResourceSlices not written: {err}"
            self._publish_due = True
            return
        self.problems.pop("slices", None)
        self.generation = writes.generation
        if not writes.empty:
            self.slice_writes += len(writes.upserts) + len(writes.deletes)
            self.log.info(
                "resource_slices", generation=writes.generation, devices=len(self.published), writes=self.slice_writes
            )
        self._publish_due = False

    # ---------------------------------------------------------------------------------- claims

    async def prepare(self, refs: tuple[ClaimRef, ...]) -> Mapping[str, PrepareResult]:
        answers = await asyncio.gather(*(self._prepare_one(ref) for ref in refs))
        return {ref.uid: answer for ref, answer in zip(refs, answers, strict=True)}

    async def _prepare_one(self, ref: ClaimRef) -> PrepareResult:
        label = f"{ref.namespace}/{ref.name}"
        try:
            done = self.prepared.get(ref.uid)
            if done is None:
                done = await self._allocate(ref)
            done = await self.mig.ensure(done, lambda: self.prepared, self._record)
            await self._write_claim(done)
        except (NodeAgentError, KubeError, TimeoutError) as err:
            self.log.warning("prepare_failed", claim=label, uid=ref.uid, error=str(err))
            return PrepareResult(error=f"{label}: {err}")
        self.log.info("prepared", claim=label, uid=ref.uid, devices=[d.device for d in done.devices])
        return PrepareResult(done.devices)

    async def _allocate(self, ref: ClaimRef) -> checkpoint.PreparedClaim:
        label = f"{ref.namespace}/{ref.name}"
        if self.ctx.node.client() is None:
            raise claims.ClaimRefused(f"cannot read ResourceClaim {label}: {self.ctx.node.problem}")
        claim = await asyncio.wait_for(
            self.ctx.node.read(RESOURCECLAIMS, ref.name, ref.namespace), self.ctx.settings.dra.claim_timeout_s
        )
        known = devices.by_name(self.published)
        got = claims.allocated(claim, uid=ref.uid, ref=label, driver=DRIVER, pool=self.pool, known=frozenset(known))
        instances = {  # to be made: an instance already there is another claim's, and refused
            a.device: checkpoint.MigInstance(d.gpu_index, d.placement[0], d.placement[1])
            for a in got
            if (d := known[a.device]).placement is not None
        }
        return checkpoint.PreparedClaim(
            ref.uid,
            ref.namespace,
            ref.name,
            tuple(
                PreparedDevice(a.requests, self.pool, a.device, (claimspec.device_id(ref.uid, a.device),)) for a in got
            ),
            {a.device: known[a.device].uuid for a in got},
            instances,
        )

    async def _record(self, claim: checkpoint.PreparedClaim) -> None:
        """A claim's record in the checkpoint now (a dynamic MIG instance about to be made, or made)."""
        async with self._lock:
            self.prepared = {**self.prepared, claim.uid: claim}
            await run_blocking(self._save)

    def _spec_names(self, uuid: str) -> bool:
        """Whether the node's CDI spec names ``uuid`` (blocking)."""
        try:
            spec = self._node_spec()
        except (ConfigError, HostPathError):
            return False
        return any(isinstance(d, dict) and d.get("name") == uuid for d in spec["devices"])

    async def _write_claim(self, claim: checkpoint.PreparedClaim) -> None:
        """The claim's CDI spec, then its record in the checkpoint (both written only when they change)."""
        async with self._lock:
            await run_blocking(self._write_spec, claim)
            if self.prepared.get(claim.uid) != claim:
                self.prepared = {**self.prepared, claim.uid: claim}
                await run_blocking(self._save)

    def _node_spec(self) -> Mapping[str, Any]:
        """The agent's own CDI spec, parsed again only when the file changed (blocking)."""
        try:
            st = self.ctx.root.resolve(self.node_spec_path).stat()
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except (OSError, HostPathError):
            signature = None
        if signature is None or self._spec_cache is None or self._spec_cache[0] != signature:
            data = self.ctx.root.read_bytes(self.node_spec_path) if signature is not None else None
            self._spec_cache = (signature, claimspec.parse_node_spec(data, self.node_spec_path))
        return self._spec_cache[1]

    def _write_spec(self, claim: checkpoint.PreparedClaim) -> None:
        node_spec = self._node_spec()
        pairs = [(d.device, claim.uuids.get(d.device, "")) for d in claim.devices]
        spec = claimspec.build(node_spec, claim.uid, pairs, source=self.node_spec_path)
        self.ctx.root.write_atomic(claimspec.spec_path(self.cdi_dir, claim.uid), claimspec.render(spec), mode=0o644)

    def _save(self) -> None:
        self.ctx.root.write_atomic(self.checkpoint_path, checkpoint.render(self.prepared), mode=0o600)

    async def unprepare(self, refs: tuple[ClaimRef, ...]) -> Mapping[str, str]:
        answers: dict[str, str] = {}
        for ref in refs:
            held = self.prepared.get(ref.uid)
            try:
                error = await self.mig.destroy(held) if held is not None else ""
            except NodeAgentError as err:
                error = str(err)
            if error:
                answers[ref.uid] = f"{ref.namespace}/{ref.name}: GPU instance not destroyed: {error}"
        async with self._lock:
            for ref in refs:
                if answers.get(ref.uid):
                    continue
                try:
                    await run_blocking(self.ctx.root.remove, claimspec.spec_path(self.cdi_dir, ref.uid))
                except HostPathError as err:
                    answers[ref.uid] = f"{ref.namespace}/{ref.name}: {err}"
                    continue
                answers[ref.uid] = ""
            left = {uid: c for uid, c in self.prepared.items() if uid not in {r.uid for r in refs} or answers[uid]}
            if left != self.prepared:
                self.prepared = left
                try:
                    await run_blocking(self._save)
                except HostPathError as err:
                    for ref in refs:
                        answers[ref.uid] = answers[ref.uid] or f"checkpoint not written: {err}"
        for ref in refs:
            self.log.info("unprepared", claim=f"{ref.namespace}/{ref.name}", uid=ref.uid, error=answers[ref.uid])
        return answers

    async def restore(self) -> None:
        """Rebuild the CDI spec of every checkpointed claim whose spec is missing (an agent restart, a reboot)."""
        missing = [
            c
            for c in self.prepared.values()
            if c.complete and not await run_blocking(self.ctx.root.exists, claimspec.spec_path(self.cdi_dir, c.uid))
        ]
        for claim in missing:
            try:
                await run_blocking(self._write_spec, claim)
            except (ConfigError, HostPathError) as err:
                self.problems[f"claim {claim.uid}"] = f"CDI spec of {claim.namespace}/{claim.name} not rebuilt: {err}"
                continue
            self.problems.pop(f"claim {claim.uid}", None)
            self.log.info("claim_spec_rebuilt", claim=f"{claim.namespace}/{claim.name}", uid=claim.uid)

    # ---------------------------------------------------------------------------------- kubelet

    def _registration_status(self, registered: bool, error: str) -> None:
        if registered:
            self.problems.pop("registration", None)
            self.log.info("registered", driver=DRIVER, endpoint=self.registration.endpoint)
            self._publish_due = True  # a (re)started kubelet wipes the node's slices: list them again now
            self._wake.set()
        else:
            self.problems["registration"] = f"the kubelet refused the registration: {error}"
            self.log.warning("registration_refused", error=error)
        self._report()

    async def serve(self) -> None:
        """Both sockets served; one deleted (a kubelet cleaning up, someone) is served again. Without the
        kubelet's ``plugins_registry`` yet (no kubelet), it waits for one."""
        self.waiting = ""
        if not await run_blocking(self.ctx.root.is_dir, self.registry_dir):
            self.waiting = f"waiting for the kubelet ({self.registry_dir})"
        for name, sock in (("dra.sock", self.server), ("registration", self.registration)):
            if name == "registration" and self.waiting:
                await sock.stop()
                self.problems.pop(name, None)
                continue
            if sock.serving and not await run_blocking(sock.present):
                self.log.info("socket_gone", socket=sock.path)
                await sock.stop()
            if sock.serving:
                continue
            try:
                await sock.serve()
                self.problems.pop(name, None)
            except BackendUnavailable as err:
                self.problems[name] = str(err)

    def _report(self) -> None:
        details: dict[str, Any] = {
            "driver": DRIVER,
            "pool": self.pool,
            "devices": [d.name for d in self.published],
            "counter_sets": [c.name for c in self.counter_sets],
            "mig_instances": {"created": self.mig.created, "destroyed": self.mig.destroyed},
            "taints": health.summary(self.published),
            "health": resource_health.summary(self.server.health.devices),
            "health_streams": self.server.health.streams,
            "generation": self.generation,
            "slice_writes": self.slice_writes,
            "registered": self.registration.registered,
            "sockets": {"dra": self.server.path, "registration": self.registration.path},
            "prepared_claims": sorted(self.prepared),
            "calls": dict(self.server.calls),
            "problems": sorted(f"{k}: {v}" for k, v in self.problems.items()),
        }
        if self.problems:
            self.set_status(Phase.DEGRADED, "; ".join(self.problems.values()), **details)
        else:
            self.set_status(Phase.RUNNING, self.waiting, **details)

    # ---------------------------------------------------------------------------------- life

    async def start(self) -> None:
        self.set_status(Phase.STARTING)
        data = await run_blocking(self.ctx.root.read_bytes, self.checkpoint_path)
        self.prepared = checkpoint.parse(data, self.checkpoint_path)
        await run_blocking(self._save)  # also makes the plugin directory
        try:
            self.inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            self.problems["inventory"] = f"no GPU inventory: {err}"
        self.health.states(dict(self.ctx.gpu_state.health))
        await self.replan()
        self.feed_health()
        await self.restore()

    def handle(self, event: events.Event) -> None:
        """One GPU event: an inventory or MIG change re-plans; an XID or a GPU state re-taints."""
        if event.topic == events.XID and isinstance(event.payload, XidEvent):
            self.health.xid(event.payload, self.clock())
            self._retaint_due = True
        elif event.topic == events.GPU_HEALTH and event.payload is not None:
            self.health.states({int(k): GpuHealthState(v) for k, v in dict(event.payload).items()})
            self._retaint_due = True
        elif isinstance(event.payload, Inventory):
            self.inventory = event.payload
            self.problems.pop("inventory", None)
            self._publish_due = True

    async def _events(self, stop: asyncio.Event) -> None:
        topics = (events.INVENTORY_CHANGED, events.MIG_CHANGED, events.XID, events.GPU_HEALTH)
        async with self.ctx.bus.subscribe(*topics, maxsize=256) as sub:
            while not stop.is_set():
                event = await until_stopped(stop, sub.get())
                if event is None:
                    continue
                self.handle(event)
                while sub.pending():  # a burst is one re-plan, one write
                    self.handle(await sub.get())
                self._wake.set()

    async def _watch_sockets(self, stop: asyncio.Event) -> None:
        """The kubelet's ``plugins_registry`` appearing (a kubelet that comes later) and either socket going."""
        root = self.ctx.root
        paths = [
            root.resolve(self.registry_dir),
            root.resolve(self.registration.path),
            root.resolve(self.server.path),
        ]
        watcher = self.ctx.backends.file_watcher(paths, poll_s=self.ctx.settings.watch.poll_s)
        async for _ in watcher.changes(stop):
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._events(stop), name="dra-events"),
            asyncio.create_task(self._watch_sockets(stop), name="dra-watch"),
        ]
        loop = asyncio.get_running_loop()
        last_publish = loop.time()
        try:
            while not stop.is_set():
                await self.serve()
                if self._retaint_due or (self._health_wait is not None and self._health_wait <= 0.0):
                    self._retaint_due = False
                    if self.retaint():
                        self._publish_due = True
                if self._publish_due or loop.time() - last_publish >= PUBLISH_S:
                    await self.replan()
                    await self.publish()
                    last_publish = loop.time()
                self.feed_health()
                if any(k.startswith("claim ") for k in self.problems):
                    await self.restore()
                self._report()
                self._wake.clear()
                wait = RECHECK_S if self._health_wait is None else min(RECHECK_S, self._health_wait)
                started = self.clock()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(until_stopped(stop, self._wake.wait()), timeout=max(wait, 0.01))
                if self._health_wait is not None:
                    self._health_wait -= self.clock() - started
        finally:
            await cancel_and_join(tasks)

    async def stop(self) -> None:
        """Stop serving (the sockets go, so the kubelet unregisters the plugin and deletes the node's slices of
        the driver 30 s later, unless a new agent registers first). Prepared claims and their specs stay: running
        pods keep their devices, and the next agent answers the same."""
        await self.registration.stop()
        await self.server.stop()
        await super().stop()

    async def describe(self) -> Plan:
        """For ``nodeagent plan``: the devices it would publish."""
        try:
            self.inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            return Plan(self.name, error=str(err))
        await self.replan()
        evidence = [f"{d.name} ({d.kind}, {d.uuid})" for d in self.published]
        evidence.append(f"driver {DRIVER} on {self.plugin_dir}/{DRA_SOCKET}, registered in {self.registry_dir}")
        return Plan(self.name, evidence=tuple(evidence))
