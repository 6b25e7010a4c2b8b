"""The labels subsystem: GFD's label set, published to the NFD file, the Node, a NodeFeature; RuntimeClasses.

Inputs arrive as events (``INVENTORY_CHANGED`` / ``MIG_CHANGED`` carry the inventory, ``DRIVER_READY``
says the driver is up, ``RUNTIME_HANDLERS`` names the runtime handlers); nothing is imported from other
subsystems. Each refresh observes (the files and objects it publishes to), plans with pure functions and
applies only the differences, so a converged node makes no writes. The own Node is observed through the
Node gateway (``Context.node``: the agent's one client and one watch), so a label someone removes comes back
and a Node that appears late gets its labels.

The own Node is also the control surface of MIG: that job is ``labels.control`` (the MIG config label in,
the MIG state label and the ``NvidiaMigConfigured`` condition out). The GPU health condition and taint are
the gpuhealth subsystem's own. Events about the Node go through the gateway's one recorder.

Trouble with the API server (unreachable, expired credentials, 403, no Node yet) never stops the agent:
the NFD file is still written, the subsystem is degraded with the reason, and it retries with backoff
until the cause goes away.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodeagent import aio, events
from nodeagent.aio import cancel_and_join, run_blocking
from nodeagent.errors import ConfigError, NodeAgentError
from nodeagent.kube.client import KubeClient, KubeError, NotFound
from nodeagent.kube.resources import NODEFEATURES, NODES, RUNTIMECLASSES
from nodeagent.labels import (
    inputs,
    labelers,
    planner,
    publish_node,
    publish_nodefeature,
    publish_runtimeclass,
)
from nodeagent.labels.control import STATUS_TOPICS, NodeControl
from nodeagent.labels.declaration import DECLARATION
from nodeagent.labels.facts import MigStrategy, Replication, Sharing, SharingStrategy
from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase

PCI_DEVICES = "/sys/bus/pci/devices"
NVIDIA_VENDOR = "0x10de"


@dataclass(frozen=True)
class HostFacts:
    pci_classes: dict[int, int | None]
    machine_type: str | None
    pci_configs: tuple[bytes, ...] | None


def sysfs_pci_address(nvml_bus_id: str) -> str:
    """NVML's ``00000000:18:00.0`` as sysfs names it: ``0000:18:00.0``."""
    domain, _, rest = nvml_bus_id.lower().partition(":")
    return f"{domain[-4:]}:{rest}"


class LabelsSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._daemon = False
        self._inventory: Inventory | None = None
        self._timestamp = int(time.time())
        self._dirty = asyncio.Event()
        self._failures = 0
        self._rng = random.Random()
        self._kube_not_before = 0.0
        """monotonic() before which no API write is made (the start jitter of a fleet restarting at once)."""
        self.labels: dict[str, str] = {}
        """The last computed label set (for status and tests)."""
        self._logged_drops: set[tuple[str, str]] = set()
        self.force_revert = False
        """`nodeagent revert --force`: restore the NFD file even when someone changed it since."""
        self._status_wanted = True
        """A refresh should bring the Node's status in line (at start, after a failed write, after drift)."""
        self.control = NodeControl(ctx.node, ctx.bus, self.log, self._event)

    # ------------------------------------------------------------------------------------ settings

    def _targets(self) -> planner.Targets:
        s = self.ctx.settings.labels
        handlers: tuple[str, ...] = ()
        if s.runtime_classes:
            reported = self.ctx.bus.last(events.RUNTIME_HANDLERS) or ()
            configured = tuple(s.runtime_handlers) or (self.ctx.settings.runtime.runtime_class,)
            handlers = tuple(dict.fromkeys((*configured, *reported)))
        return planner.Targets(
            node_name=self.ctx.node_name,
            nfd_file=s.nfd_file_path if s.nfd_file else "",
            node_patch=s.node_patch,
            node_feature=s.node_feature,
            namespace=client.namespace if (client := self.ctx.node.client()) is not None else "",
            runtime_handlers=handlers,
        )

    def _kube_wanted(self) -> bool:
        s = self.ctx.settings.labels
        return s.node_patch or s.node_feature or s.runtime_classes

    def client(self) -> KubeClient | None:
        """The agent's one Kubernetes client (the Node gateway's); None with the reason in ``ctx.node.problem``."""
        return self.ctx.node.client()

    # ----------------------------------------------------------------------------------- observing

    def _read_text(self, path: str) -> str | None:
        try:
            return self.ctx.root.read_text(path)
        except NodeAgentError:
            return None

    def _read_host(self, inventory: Inventory) -> HostFacts:
        """PCI classes of the GPUs, the machine type and the NVIDIA PCI configuration spaces (sysfs)."""
        classes: dict[int, int | None] = {}
        for gpu in inventory.gpus:
            text = self._read_text(f"{PCI_DEVICES}/{sysfs_pci_address(gpu.pci_bus_id)}/class")
            try:
                classes[gpu.index] = int(text.strip(), 16) if text else None
            except ValueError:
                classes[gpu.index] = None
        machine = self._read_text(self.ctx.settings.labels.machine_type_file)
        configs: list[bytes] = []
        addresses = self.ctx.root.listdir(PCI_DEVICES)
        for address in addresses:
            if (self._read_text(f"{PCI_DEVICES}/{address}/vendor") or "").strip() != NVIDIA_VENDOR:
                continue
            try:
                configs.append(self.ctx.root.read_bytes(f"{PCI_DEVICES}/{address}/config") or b"")
            except NodeAgentError:
                configs.append(b"")
        return HostFacts(
            classes, machine.strip() if machine is not None else None, tuple(configs) if addresses else None
        )

    async def _current_inventory(self, problems: list[str]) -> Inventory | None:
        inventory = self._inventory
        if inventory is None:
            try:
                inventory = await self.ctx.gpu_state.current()
            except NodeAgentError as err:
                problems.append(f"no GPU inventory: {err}")
        return inventory

    async def compute_labels(self, problems: list[str]) -> labelers.LabelSet | None:
        inventory = await self._current_inventory(problems)
        if inventory is None:
            return None
        s = self.ctx.settings.labels
        host = await run_blocking(self._read_host, inventory)
        sharing = await self._sharing(problems)
        facts = inputs.node_facts(
            inventory,
            pci_classes=host.pci_classes,
            machine_type=host.machine_type,
            mig_strategy=MigStrategy(s.mig_strategy),
            sharing=sharing,
            timestamp=self._timestamp if s.timestamp else None,
            pci_configs=host.pci_configs,
        )
        try:
            result = labelers.compute(facts)
        except labelers.LabelingError as err:
            problems.append(f"cannot label: {err}")
            return None
        for key, value, why in result.dropped:
            if (key, value) not in self._logged_drops:
                self._logged_drops.add((key, value))
                self.log.warning("label_dropped", key=key, value=value, reason=why)
        return result

    async def _sharing(self, problems: list[str]) -> Sharing:
        """What the sharing labels say: ``labels.sharing_strategy`` other than ``auto`` overrides (with
        ``labels.replicas``); ``auto`` follows the device plugin's time-slicing (its settings and config file,
        derived by its settings section: no import of that subsystem) while it is enabled."""
        s = self.ctx.settings
        if s.labels.sharing_strategy != "auto":
            strategy = SharingStrategy(s.labels.sharing_strategy)
            if strategy == SharingStrategy.NONE:
                return Sharing()
            return Sharing(strategy, {"nvidia.com/gpu": Replication(s.labels.replicas)})
        plugin = s.deviceplugin
        if not plugin.enabled:
            return Sharing()
        path = plugin.config_file
        try:
            text = await run_blocking(Path(path).read_text, encoding="utf-8") if path else None
            derived = plugin.label_sharing(s.labels.mig_strategy, text, source=path)
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"sharing labels: cannot read deviceplugin.config_file {path}: {err}")
            return Sharing()
        except ConfigError as err:
            problems.append(f"sharing labels: {err}")
            return Sharing()
        return inputs.plugin_sharing(derived.resources, derived.every)

    async def observe(self) -> planner.Observation:
        obs = planner.Observation()
        obs.label_set = await self.compute_labels(obs.problems)
        targets = self._targets()
        if targets.nfd_file:
            obs.nfd_existing = await run_blocking(self._read_bytes, targets.nfd_file)
        if not self._kube_wanted():
            return obs
        client = self.client()
        if client is None:
            obs.kube_problems["kube"] = self.ctx.node.problem
            return obs
        targets = self._targets()
        if targets.node_patch:
            try:
                obs.node = await self.ctx.node.get()
                self.control.note_node(obs.node)
            except NotFound:
                obs.kube_problems["node"] = f"Node {targets.node_name} does not exist (yet)"
            except KubeError as err:
                obs.kube_problems["node"] = str(err)
        if targets.node_feature:
            name = publish_nodefeature.object_name(targets.node_name)
            try:
                obs.nodefeature = await client.get_or_none(NODEFEATURES, name, targets.namespace)
            except KubeError as err:
                obs.kube_problems["nodefeature"] = str(err)
        for handler in targets.runtime_handlers:
            try:
                obs.runtimeclasses[handler] = await client.get_or_none(RUNTIMECLASSES, handler)
            except KubeError as err:
                obs.kube_problems["runtimeclasses"] = str(err)
                break
        return obs

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            return self.ctx.root.read_bytes(path)
        except NodeAgentError:
            return None

    def plan(self, observed: planner.Observation) -> Plan:
        targets = self._targets()
        plan = planner.plan(observed, targets, self.name)
        if observed.label_set is not None:
            self.labels = planner.keep_published_timestamp(dict(observed.label_set.labels), observed, targets)
        self.last_plan = plan
        return plan

    # ------------------------------------------------------------------------------------- applying

    async def apply(self, plan: Plan) -> ApplyResult:
        changed: list[str] = []
        messages: list[str] = []
        for step in plan.steps:
            try:
                if await self._apply_step(step.action, step.target, step.payload):
                    changed.append(step.target)
            except KubeError as err:
                messages.append(f"{step.target}: {err}")
        return ApplyResult(changed=tuple(changed), messages=tuple(messages))

    async def _apply_step(self, action: str, target: str, payload: Any) -> bool:
        if action == "write-nfd-file":
            wrote: bool = await run_blocking(
                self.ctx.root.write_atomic, target, payload, mode=0o644, journal=self.ctx.journal
            )
            if wrote:
                self.log.info("nfd_file_written", path=target, labels=len(self.labels))
            return wrote
        client = self.client()
        assert client is not None, "kube steps are planned only with a client"
        if action == "patch-node":
            await self._patch_node(payload)
        elif action == "create-nodefeature":
            await client.create(NODEFEATURES, payload, payload["metadata"]["namespace"])
        elif action == "update-nodefeature":
            await self._update_nodefeature(client, payload)
        elif action.endswith("-runtimeclass"):
            await self._runtimeclass(client, action.removesuffix("-runtimeclass"), payload)
        self.log.info("labels_published", action=action, target=target)
        return True

    async def _patch_node(self, planned: dict[str, Any]) -> None:
        """The planned patch (it carries the read's resourceVersion); on 409 recomputed from a fresh read."""
        await self.ctx.node.patch(lambda node: publish_node.node_patch(node, self.labels), first=planned)

    async def _update_nodefeature(self, client: KubeClient, body: dict[str, Any]) -> None:
        meta = body["metadata"]

        def mutate(current: dict[str, Any]) -> dict[str, Any] | None:
            return publish_nodefeature.update(current, self.ctx.node_name, self.labels)

        await client.modify(NODEFEATURES, meta["name"], mutate, meta["namespace"])

    async def _runtimeclass(self, client: KubeClient, action: str, handler: str) -> None:
        if action == "recreate":
            self.log.warning("runtimeclass_recreated", handler=handler, reason="handler differs; it is immutable")
            await client.delete(RUNTIMECLASSES, handler)
        if action in ("create", "recreate"):
            try:
                await client.create(RUNTIMECLASSES, publish_runtimeclass.desired(handler))
            except KubeError as err:
                if err.code != 409:  # another node's agent created it first
                    raise
            return

        def mutate(current: dict[str, Any]) -> dict[str, Any] | None:
            if publish_runtimeclass.action(current, handler) != "label":
                return None
            current.setdefault("metadata", {}).setdefault("labels", {})[publish_runtimeclass.MANAGED_BY] = (
                publish_runtimeclass.MANAGER
            )
            return current

        await client.modify(RUNTIMECLASSES, handler, mutate)

    async def revert(self) -> ApplyResult:
        changed: list[str] = []
        messages: list[str] = []
        client = self.client() if self._kube_wanted() else None
        targets = self._targets()  # after the client: the NodeFeature's namespace is the client's
        path = self.ctx.settings.labels.nfd_file_path
        entries = await run_blocking(self.ctx.journal.entries)
        if path in entries and await run_blocking(
            self.ctx.journal.restore, self.ctx.root, path, force=self.force_revert
        ):
            changed.append(path)
        if client is not None:
            try:
                await self._revert_kube(client, targets, changed)
            except KubeError as err:
                messages.append(str(err))
        return ApplyResult(changed=tuple(changed), messages=tuple(messages))

    async def _revert_kube(self, client: KubeClient, targets: planner.Targets, changed: list[str]) -> None:
        if targets.node_patch:
            node = await client.get_or_none(NODES, targets.node_name)
            if node is not None and (await self.ctx.node.patch(publish_node.revert_patch, node=node))[1]:
                changed.append(f"Node/{targets.node_name}")
            if node is not None:
                changed.extend(await self.control.revert())
        if targets.node_feature:
            name = publish_nodefeature.object_name(targets.node_name)
            if await client.get_or_none(NODEFEATURES, name, targets.namespace) is not None:
                await client.delete(NODEFEATURES, name, targets.namespace)
                changed.append(f"NodeFeature/{targets.namespace}/{name}")
        for handler in targets.runtime_handlers:
            existing = await client.get_or_none(RUNTIMECLASSES, handler)
            if existing is not None and publish_runtimeclass.ours(existing):
                await client.delete(RUNTIMECLASSES, handler)
                changed.append(f"RuntimeClass/{handler}")

    # ---------------------------------------------------------------------------------- daemon life

    async def start(self) -> None:
        self._daemon = True
        self.set_status(Phase.STARTING)
        if self._kube_wanted():
            self.client()
            jitter = self.ctx.settings.labels.start_jitter_s
            self._kube_not_before = time.monotonic() + (self._rng.uniform(0, jitter) if jitter > 0 else 0.0)
        await self.refresh()

    async def refresh(self) -> bool:
        """Observe, plan, apply; set the status. True when everything was published."""
        try:
            obs = await self.observe()
            plan = self.plan(obs)
            if plan.error:
                self.set_status(Phase.DEGRADED, plan.error)
                return False
            deferred = self._deferred_s()
            if deferred > 0:  # the file now, the API writes after the start jitter
                plan = Plan(
                    plan.subsystem,
                    tuple(s for s in plan.steps if s.action == "write-nfd-file"),
                    plan.evidence,
                    plan.warnings,
                )
            result = await self.apply(plan)
            if (
                self._status_wanted
                and deferred <= 0
                and self.client() is not None
                and self.ctx.settings.labels.node_patch
            ):
                self._status_wanted = False
                result = await self._sync_status_reporting(result)
        except (NodeAgentError, OSError) as err:
            self._failures += 1
            self.set_status(Phase.DEGRADED, f"cannot publish labels: {err}")
            return False
        problems = [w for w in plan.warnings if w.split(":", 1)[0] in ("kube", "node", "nodefeature", "runtimeclasses")]
        problems += list(result.messages)
        details: dict[str, Any] = {
            "labels": len(self.labels),
            "published_to": list(plan.evidence[1:]),
            "changed": list(result.changed),
            "first_api_writes_in_s": round(deferred, 1),
            "node_watch": self.ctx.node.watch_status(),
        }
        published = [c for c in result.changed if c.startswith(("Node/", "NodeFeature/"))]
        if published:
            await self._event("Normal", "GpuLabelsPublished", f"{len(self.labels)} labels: {', '.join(published)}")
        if problems:
            self._failures += 1
            reason = "; ".join(problems)
            if self.status().reason != reason:
                await self._event("Warning", "GpuLabelsNotPublished", reason)
            self.set_status(Phase.DEGRADED, reason, **details)
            return False
        self._failures = 0
        self.set_status(Phase.RUNNING, "", **details)
        return True

    # ------------------------------------------------------------------- the Node as control surface

    async def _sync_status_reporting(self, result: ApplyResult) -> ApplyResult:
        try:
            written = await self.control.sync()
        except KubeError as err:
            self._status_wanted = True
            return replace(result, messages=(*result.messages, f"node status: {err}"))
        changed = (*result.changed, *(f"Node/{self.ctx.node_name} {w}" for w in written))
        return replace(result, changed=changed)

    def _status_failed(self) -> None:
        self._status_wanted = True
        self._dirty.set()

    async def _event(self, kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event about the Node, by the running agent only, best effort (a failure is logged)."""
        if not self._daemon or self.ctx.node.client() is None:
            return
        problem = await self.ctx.node.record_event(kind, reason, message)
        if problem:
            self.log.debug("event_not_recorded", reason=reason, problem=problem)

    def _deferred_s(self) -> float:
        return max(0.0, self._kube_not_before - time.monotonic())

    def _retry_delay(self) -> float:
        cap = min(self.ctx.settings.labels.retry_max_s, 2.0 * 2 ** min(self._failures, 10))
        return self._rng.uniform(cap / 2, cap)

    async def run(self, stop: asyncio.Event) -> None:
        topics = (events.INVENTORY_CHANGED, events.MIG_CHANGED, events.DRIVER_READY, events.RUNTIME_HANDLERS)
        async with self.ctx.bus.subscribe(*topics) as sub:
            status_sub = self.ctx.bus.subscribe(*STATUS_TOPICS, maxsize=64)
            tasks = [
                aio.guarded_task(self._listen(sub), name="labels.inputs"),
                aio.guarded_task(self._observe_node(), name="labels.node"),
            ]
            if self.ctx.settings.labels.node_patch:
                tasks.append(
                    aio.guarded_task(self.control.follow(status_sub, self._status_failed), name="labels.status")
                )
            try:
                while not stop.is_set():
                    degraded = self.status().phase != Phase.RUNNING
                    timeout = self._retry_delay() if degraded else self.ctx.settings.labels.resync_s
                    if self._deferred_s() > 0:
                        timeout = min(timeout, self._deferred_s())
                    if await aio.first_of(stop, self._dirty, timeout_s=timeout) is stop:
                        break
                    self._dirty.clear()
                    await self.refresh()
            finally:
                status_sub.close()
                await cancel_and_join(tasks)

    async def _listen(self, sub: events.Subscription) -> None:
        async for event in sub:
            if event.topic in (events.INVENTORY_CHANGED, events.MIG_CHANGED) and event.payload is not None:
                self._inventory = event.payload
            self._dirty.set()

    async def _observe_node(self) -> None:
        """Through the gateway's one watch of the own Node: wake a refresh when it appears or its owned labels
        or status drift."""
        if not self.ctx.settings.labels.node_patch:
            return
        async with self.ctx.node.observe() as changes:
            async for node in changes:
                self.control.note_node(node)
                if node is not None and self.control.out_of_sync(node):
                    self._status_wanted = True
                    self._dirty.set()
                if node is None or publish_node.node_patch(node, self.labels) is not None:
                    self._dirty.set()
                if self.ctx.node.watch_failures > 1 and self.status().phase == Phase.RUNNING:
                    self._dirty.set()  # the API server may be gone: a refresh finds out and says so
