"""The ``deviceplugin`` subsystem: GPUs and MIG devices allocatable by pods, through the kubelet's device
plugin API (v1beta1), on the GPU-state owner's inventory and events.

One socket per resource in ``kubelet.device_plugins_dir`` (``nodeagent-gpu.sock``, ``nodeagent-mig-1g.10gb.sock``;
``backends/deviceplugin_server.py``), each registered on the kubelet's ``kubelet.sock``. What is advertised is
planned in ``resources.py`` (MIG strategy ``labels.mig_strategy``, time-slicing from ``[deviceplugin]`` or
NVIDIA's config file, ``config.py``); health in ``health.py`` (gpuhealth's classification and hold; a device
turning Unhealthy or Healthy again is in ``/status`` and one Event about the Node, through the Node gateway);
Allocate in ``allocate.py``, with the names of the agent's own CDI spec (``cdinames.py``).

Events reach the kubelet at once: an XID or a lost GPU re-plans the devices and every open ListAndWatch stream
gets the new list; a MIG change (``MIG_CHANGED``, ``INVENTORY_CHANGED``) advertises the new resources and sends
an empty list for the old ones (their allocatable drops to zero). ``kubelet.sock`` is watched (the file-watch
backend): a kubelet restart deletes the plugin sockets and recreates it, and the plugin serves again and
re-registers; with no kubelet yet, it waits for one. If NVIDIA's device plugin serves a resource
(``nvidia-<name>.sock`` in the directory), or the GPU Operator deploys it on this Node (its
``nvidia.com/gpu.deploy.device-plugin`` label is ``true``, seen through the Node gateway), the resource is left
to it and ``/status`` says so. With DRA on (``dra.enabled``), the GPUs ``dra.gpus`` names are left to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeagent import events
from nodeagent.aio import cancel_and_join, run_blocking, until_stopped
from nodeagent.backends.deviceplugin_server import (
    KUBELET_SOCKET,
    ContainerAllocation,
    Device,
    DevicePluginServer,
    Options,
    register,
    socket_inode,
    sockets_in,
)
from nodeagent.deviceplugin import allocate, config, resources
from nodeagent.deviceplugin.cdinames import CdiNames
from nodeagent.deviceplugin.declaration import DECLARATION
from nodeagent.deviceplugin.health import HealthBook, HealthChange, changes
from nodeagent.errors import BackendUnavailable, ConfigError, NodeAgentError
from nodeagent.model.gpu import GpuHealthState, Inventory, XidEvent
from nodeagent.plan import Plan
from nodeagent.subsystem import BaseSubsystem, Context, Phase

RECHECK_S = 10.0
"""How often the sockets are checked without an event (a missed notification costs at most this)."""
RETRY_S = 1.0
"""Delay before a failed Register or bind is tried again."""
KUBELET_EVENT = "deviceplugin.kubelet"
CONFIG_EVENT = "deviceplugin.config"
REPLANNED_EVENT = "deviceplugin.replanned"
NODE_EVENT = "deviceplugin.node"
STREAM_ENDED_EVENT = "deviceplugin.stream-ended"
OPERATOR_LABEL = "nvidia.com/gpu.deploy.device-plugin"
"""The GPU Operator deploys NVIDIA's device plugin on a Node where this label is ``true``."""

OPTIONS = Options(get_preferred_allocation_available=True)


def nvidia_socket(resource: str) -> str:
    """The socket NVIDIA's device plugin serves ``resource`` on (``nvidia-gpu.sock``, ``nvidia-mig-1g.10gb.sock``)."""
    return "nvidia-" + resource.removeprefix("nvidia.com/").replace("/", "_") + ".sock"


class _Resource:
    """One resource's answers, looked up in the latest plan at each call (a MIG change is seen at once)."""

    def __init__(self, sub: DevicePluginSubsystem, name: str) -> None:
        self.sub = sub
        self.name = name

    def _planned(self) -> resources.PlannedResource:
        return self.sub.advertised.resource(self.name) or resources.PlannedResource(self.name, ())

    def preferred(self, available: tuple[str, ...], must_include: tuple[str, ...], size: int) -> tuple[str, ...]:
        return allocate.preferred(self._planned(), available, must_include, size)

    async def allocate(self, device_ids: tuple[str, ...]) -> ContainerAllocation:
        return await self.sub.allocate(self._planned(), device_ids)


class DevicePluginSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ctx)
        self.clock = clock
        s = self.ctx.settings
        self.plugin_dir = s.kubelet.device_plugins_dir
        self.health = HealthBook(
            window_s=s.gpuhealth.xid_window_s,
            ignored=tuple(s.gpuhealth.ignored_xids),
            hold_base_s=s.gpuhealth.min_publish_interval_s,
        )
        self.cdi = CdiNames(self.ctx.root, s.cdi.spec_path)
        self.cdi_kind = s.cdi.vendor_class
        self.config: config.Effective | None = None
        self.inventory: Inventory | None = None
        self.advertised = resources.Advertised(())
        self.unhealthy: dict[int, str] = {}
        self.unhealthy_instances: dict[tuple[int, int], str] = {}
        self.servers: dict[str, DevicePluginServer] = {}
        self.registered: dict[str, int] = {}
        """Resource → the inode of the kubelet.sock it registered on (a new kubelet has a new one)."""
        self.problems: dict[str, str] = {}
        """Resource → why it is not served or registered now."""
        self.yielded: dict[str, str] = {}
        self.registrations = 0
        self.kubelet_present = False
        self._health_wait: float | None = None
        self._retry = False
        self._dropped_at: dict[str, float] = {}
        self._register_after: dict[str, tuple[float, int]] = {}
        """Resource → (clock, kubelet.sock inode): not registered again on that kubelet before then, after it
        dropped the plugin twice within ``RETRY_S`` (a new kubelet is registered on at once)."""
        self._queue: asyncio.Queue[events.Event] = asyncio.Queue()
        self._changes: list[HealthChange] = []
        """Health Events not recorded yet (``_record_events`` sends them, in order)."""
        self._changed = asyncio.Event()
        self.recorded: list[HealthChange] = []
        """The health Events recorded (or tried: recording is best effort), the last few."""
        self.config_problem = ""
        self.node_labels: dict[str, str] = {}
        """The own Node's labels, as last read (empty without Kubernetes)."""

    # ------------------------------------------------------------------------------------ settings

    async def load_config(self) -> config.Effective:
        s = self.ctx.settings
        path = s.deviceplugin.config_file
        if not path:
            return config.effective(s.deviceplugin, s.labels.mig_strategy)
        try:
            text = await run_blocking(Path(path).read_text, encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                "device-plugin config file not found", source=path, key="deviceplugin.config_file"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read: {err}", source=path, key="deviceplugin.config_file") from None
        parsed = config.parse(text, source=path)
        return config.effective(s.deviceplugin, s.labels.mig_strategy, parsed, source=path)

    # ------------------------------------------------------------------------------------ planning

    def replan(self) -> None:
        """Health and devices now; every server's ListAndWatch streams get a changed list at once."""
        assert self.config is not None
        inventory = self.inventory
        dra = self.ctx.settings.dra
        if inventory is not None and dra.enabled:  # the GPUs dra.gpus names are DRA's (loading refuses it empty)
            inventory = inventory.split(dra.gpus)[1]
        gpus = [g.index for g in inventory.gpus] if inventory is not None else []
        verdicts = self.health.evaluate(gpus, self.clock())
        before = self._verdict_keys()
        self.unhealthy, self.unhealthy_instances = dict(verdicts.gpus), dict(verdicts.instances)
        self._health_wait = verdicts.wait_s
        if inventory is None:
            self.advertised = resources.Advertised((), ("no GPU inventory",))
        else:
            self.advertised = resources.plan(
                inventory,
                strategy=self.config.mig_strategy,
                id_strategy=self.config.device_id_strategy,
                sharing=self.config.time_slicing,
                unhealthy=self.unhealthy,
                unhealthy_instances=self.unhealthy_instances,
                numa={g.index: g.numa_node for g in inventory.gpus},
            )
        for name, server in self.servers.items():
            server.update(self._devices(name))
        uuids = {g.index: g.uuid for g in inventory.gpus} if inventory is not None else {}
        found = changes(before, self._verdict_keys(), uuids=uuids, advertised=self.advertised)
        if found:
            self._changes += found
            self._changed.set()

    def _verdict_keys(self) -> dict[tuple[int, int | None], str]:
        whole: dict[tuple[int, int | None], str] = {(g, None): why for g, why in self.unhealthy.items()}
        return whole | {(g, i): why for (g, i), why in self.unhealthy_instances.items()}

    def _devices(self, name: str) -> tuple[Device, ...]:
        planned = self.advertised.resource(name)
        if planned is None:
            return ()
        return tuple(
            Device(d.id, d.healthy, (d.unit.numa_node,) if d.unit.numa_node is not None else ())
            for d in planned.devices
        )

    async def allocate(self, planned: resources.PlannedResource, device_ids: tuple[str, ...]) -> ContainerAllocation:
        assert self.config is not None
        strategies = self.config.device_list_strategy
        names = await run_blocking(self.cdi.names) if {"cdi-cri", "cdi-annotations"} & set(strategies) else None
        answer = allocate.answer(
            planned,
            device_ids,
            strategies=strategies,
            cdi_kind=self.cdi_kind,
            cdi_names=names,
            cdi_source=self.cdi.spec_path,
            id_strategy=self.config.device_id_strategy,
            fail_greater_than_one=self.config.time_slicing.fail_requests_greater_than_one,
        )
        self.log.info("allocated", resource=planned.name, devices=list(device_ids), cdi=list(answer.cdi_devices))
        return answer

    # ------------------------------------------------------------------------------- the kubelet

    def _wanted(self) -> list[str]:
        """Resources to serve: those with devices, and every one served before (an empty list drops it to 0)."""
        names = [r.name for r in self.advertised.resources if r.devices]
        return names + [n for n in self.servers if n not in names]

    async def sync(self, *, replan: bool = True) -> None:
        """Serve every wanted resource, re-serve one whose socket was deleted, register where needed. Without
        ``replan`` (the periodic recheck, when no hold or retry is due) only the sockets are looked at."""
        if replan:
            self.replan()
        root, directory = self.ctx.root, self.plugin_dir
        kubelet = await run_blocking(socket_inode, root, directory, KUBELET_SOCKET)
        present = set(await run_blocking(sockets_in, root, directory))
        self.kubelet_present = kubelet is not None
        self._retry = False
        for name in self._wanted():
            await self._sync_one(name, kubelet, present)
        self._report()

    async def _sync_one(self, name: str, kubelet: int | None, present: set[str]) -> None:
        theirs = nvidia_socket(name)
        server = self.servers.get(name)
        why = self._nvidia_plugin(name, theirs in present)
        if why:
            self.yielded[name] = why
            self.problems.pop(name, None)
            if server is not None:
                await server.stop()
                del self.servers[name]
            self.registered.pop(name, None)
            return
        self.yielded.pop(name, None)
        if server is None:
            server = self.servers[name] = DevicePluginServer(
                self.ctx.root,
                self.plugin_dir,
                resources.socket_name(name),
                _Resource(self, name),
                options=OPTIONS,
                on_stream_end=lambda: self._queue.put_nowait(events.Event(STREAM_ENDED_EVENT, name)),
            )
            server.update(self._devices(name))
        if server.serving and not await run_blocking(server.socket_present):
            self.log.info("plugin_socket_gone", resource=name, socket=server.socket_path)
            await server.stop()
            self.registered.pop(name, None)
            self._register_after.pop(name, None)  # a kubelet restart deleted it: the new one is registered on at once
        if not server.serving:
            try:
                await server.start()
            except BackendUnavailable as err:
                self.problems[name] = str(err)
                self._retry = kubelet is not None
                return
        if kubelet is None:
            self.registered.pop(name, None)
            self.problems[name] = f"waiting for the kubelet ({self.plugin_dir.rstrip('/')}/{KUBELET_SOCKET})"
            return
        if self.registered.get(name) == kubelet:
            return
        not_before, dropped_by = self._register_after.get(name, (0.0, 0))
        if dropped_by == kubelet and self.clock() < not_before:
            self._retry = True
            return
        try:
            await register(
                self.ctx.root,
                self.plugin_dir,
                resource_name=name,
                endpoint=server.socket_name,
                options=OPTIONS,
                timeout_s=self.ctx.settings.deviceplugin.register_timeout_s,
            )
        except BackendUnavailable as err:
            self.problems[name] = str(err)
            self._retry = True
            self.log.warning("register_failed", resource=name, error=str(err))
            return
        self.registered[name] = kubelet
        self.registrations += 1
        self.problems.pop(name, None)
        self.log.info("registered", resource=name, socket=server.socket_name, devices=len(server.devices))

    def _nvidia_plugin(self, name: str, socket_present: bool) -> str:
        """Why NVIDIA's device plugin has ``name`` ('' when it does not): its socket, or the operator's label."""
        if socket_present:
            return f"NVIDIA's device plugin serves {name} ({nvidia_socket(name)}): not registered by nodeagent"
        if self.node_labels.get(OPERATOR_LABEL) == "true":
            return (
                f"the GPU Operator deploys NVIDIA's device plugin here ({OPERATOR_LABEL}=true): {name} not registered"
            )
        return ""

    def _report(self) -> None:
        details: dict[str, Any] = {
            "resources": {
                name: {
                    "devices": len(server.devices),
                    "healthy": sum(d.healthy for d in server.devices),
                    "socket": server.socket_path,
                    "registered": name in self.registered,
                }
                for name, server in sorted(self.servers.items())
            },
            "kubelet": "present" if self.kubelet_present else "absent",
            "registrations": self.registrations,
            "unhealthy": {str(k): v for k, v in sorted(self.unhealthy.items())}
            | {f"{g}/gi{i}": v for (g, i), v in sorted(self.unhealthy_instances.items())},
            "problems": list(self.advertised.problems) + sorted(f"{k}: {v}" for k, v in self.problems.items()),
            "yielded": dict(self.yielded),
            "config": self.config.source if self.config is not None else "",
        }
        failures = [v for k, v in self.problems.items() if k in self.servers and self.kubelet_present]
        if self.config_problem:
            failures.append(self.config_problem)
        if not self.kubelet_present and not self.config_problem:
            reason = f"waiting for the kubelet ({self.plugin_dir.rstrip('/')}/{KUBELET_SOCKET})"
            self.set_status(Phase.RUNNING, reason, **details)
        elif failures or self.advertised.problems or self.unhealthy or self.unhealthy_instances:
            every = [f"GPU {k} unhealthy: {v}" for k, v in sorted(self.unhealthy.items())] + [
                f"GPU {g} instance {i} unhealthy: {v}" for (g, i), v in sorted(self.unhealthy_instances.items())
            ]
            sick = every[:3] + ([f"{len(every) - 3} more unhealthy (details: unhealthy)"] if len(every) > 3 else [])
            reason = "; ".join(failures + list(self.advertised.problems) + sick)
            self.set_status(Phase.DEGRADED, reason, **details)
        else:
            self.set_status(Phase.RUNNING, "", **details)

    # ------------------------------------------------------------------------------------- events

    def handle(self, event: events.Event) -> bool:
        """Take one event: a GPU event from the bus (``_forward`` re-plans after it), or the loop's own
        (kubelet, config file, Node, re-planned; the next ``sync`` acts on them). True when the config file changed."""
        if event.topic == CONFIG_EVENT:
            return True
        if event.topic == STREAM_ENDED_EVENT:
            self._stream_ended(str(event.payload))
        if event.topic == events.XID and isinstance(event.payload, XidEvent):
            self.health.xid(event.payload, self.clock())
        elif event.topic == events.GPU_HEALTH and event.payload is not None:
            self.health.states({int(k): GpuHealthState(v) for k, v in dict(event.payload).items()})
        elif event.topic in (events.INVENTORY_CHANGED, events.MIG_CHANGED) and isinstance(event.payload, Inventory):
            self.inventory = event.payload
        return False

    def _stream_ended(self, name: str) -> None:
        """The kubelet closed the last ListAndWatch stream of a registered resource without a restart: it
        forgot the plugin (its device manager disconnects whichever client is current when a previous
        endpoint's stream ends, e.g. after a quick agent restart), so the next sync registers again."""
        server = self.servers.get(name)
        if server is None or server.streams > 0 or name not in self.registered:
            return
        self.log.info("kubelet_dropped_plugin", resource=name, socket=server.socket_path)
        kubelet = self.registered.pop(name)
        now = self.clock()
        if now - self._dropped_at.get(name, -RETRY_S) < RETRY_S:  # a kubelet that keeps dropping it: slow down
            self._register_after[name] = (now + RETRY_S, kubelet)
        self._dropped_at[name] = now

    async def _reload_config(self) -> None:
        """The config file changed: use it, or keep the old values and say why."""
        try:
            self.config = await self.load_config()
        except ConfigError as err:
            self.config_problem = f"{err}; the previous config stays in effect"
            self.log.error("config_rejected", error=str(err))
            return
        self.config_problem = ""
        self.log.info("config_reloaded", source=self.config.source)

    async def _forward(self, stop: asyncio.Event) -> None:
        """GPU events re-plan the devices here, at once: the streams never wait for socket work (a slow
        Register) in the main loop, which then only serves and registers what changed."""
        topics = (events.XID, events.GPU_HEALTH, events.INVENTORY_CHANGED, events.MIG_CHANGED)
        async with self.ctx.bus.subscribe(*topics, maxsize=256) as sub:
            while not stop.is_set():
                event = await until_stopped(stop, sub.get())
                if event is None:
                    continue
                self.handle(event)
                while sub.pending():  # a burst is one re-plan
                    self.handle(await sub.get())
                self.replan()
                self._queue.put_nowait(events.Event(REPLANNED_EVENT, None))

    async def _watch_files(self, stop: asyncio.Event) -> None:
        """``kubelet.sock`` (a kubelet restart recreates it) and NVIDIA's config file (a ConfigMap update)."""
        local = self.ctx.root.resolve(self.plugin_dir) / KUBELET_SOCKET
        config_file = self.ctx.settings.deviceplugin.config_file
        paths = [local, *([Path(config_file).absolute()] if config_file else [])]
        watcher = self.ctx.backends.file_watcher(paths, poll_s=self.ctx.settings.watch.poll_s)
        async for changed in watcher.changes(stop):
            if local in changed:
                self._queue.put_nowait(events.Event(KUBELET_EVENT, str(local)))
            if changed - {local}:
                self._queue.put_nowait(events.Event(CONFIG_EVENT, config_file))

    async def _record_events(self, stop: asyncio.Event) -> None:
        """Each device's health change as one Event about the Node (through the Node gateway), best effort."""
        while not stop.is_set():
            if not self._changes:
                self._changed.clear()
                await until_stopped(stop, self._changed.wait())
                continue
            change = self._changes.pop(0)
            self.recorded = [*self.recorded[-15:], change]
            self.log.info("device_health", kind=change.kind, reason=change.reason, message=change.message)
            if self.ctx.node.client() is None:
                continue
            problem = await self.ctx.node.record_event(change.kind, change.reason, change.message)
            if problem:
                self.log.debug("event_not_recorded", reason=change.reason, problem=problem)

    async def _observe_node(self, stop: asyncio.Event) -> None:
        """The operator's label on the own Node (through the Node gateway; nothing when Kubernetes is off)."""
        if self.ctx.node.client() is None:
            return
        async with self.ctx.node.observe() as changes:
            while not stop.is_set():
                got = await until_stopped(stop, anext(changes))
                if stop.is_set():
                    return
                self._seen_node(got)
                self._queue.put_nowait(events.Event(NODE_EVENT, got))

    def _seen_node(self, node: dict[str, Any] | None) -> None:
        labels = (node or {}).get("metadata", {}).get("labels") or {}
        self.node_labels = {str(k): str(v) for k, v in labels.items()}

    # ---------------------------------------------------------------------------------------- life

    async def start(self) -> None:
        self.set_status(Phase.STARTING)
        self.config = await self.load_config()
        try:
            self.inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            self.log.warning("no_inventory", error=str(err))
        self.health.states(dict(self.ctx.gpu_state.health))
        if self.ctx.node.client() is not None:  # know the operator's label before the first registration
            try:
                self._seen_node(await asyncio.wait_for(self.ctx.node.get(), timeout=5.0))
            except (NodeAgentError, TimeoutError) as err:
                self.log.warning("node_not_read", error=str(err))
        self.replan()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._forward(stop), name="deviceplugin-events"),
            asyncio.create_task(self._watch_files(stop), name="deviceplugin-watch"),
            asyncio.create_task(self._observe_node(stop), name="deviceplugin-node"),
            asyncio.create_task(self._record_events(stop), name="deviceplugin-events-out"),
        ]
        try:
            await self.sync()
            while not stop.is_set():
                waits = [RECHECK_S, RETRY_S if self._retry else RECHECK_S]
                if self._health_wait is not None:
                    waits.append(max(self._health_wait, 0.01))
                timeout = min(waits)
                try:
                    event = await asyncio.wait_for(until_stopped(stop, self._queue.get()), timeout=timeout)
                except TimeoutError:
                    event = None
                if stop.is_set():
                    break
                if event is not None:
                    reload = self.handle(event)
                    while not self._queue.empty():  # a burst is one re-plan
                        reload = self.handle(self._queue.get_nowait()) or reload
                    if reload:
                        await self._reload_config()
                # re-plans first: a changed device list is on the streams before any socket work; the idle
                # recheck (no event, no retry, no health hold running) only looks at the sockets
                idle = event is None and timeout >= RECHECK_S and self._health_wait is None
                await self.sync(replan=not idle)
        finally:
            await cancel_and_join(tasks)

    async def stop(self) -> None:
        servers, self.servers = self.servers, {}
        for server in servers.values():
            await server.stop()
        self.registered.clear()
        await super().stop()

    async def describe(self) -> Plan:
        """For ``nodeagent plan``: what it would advertise (it changes nothing on the node itself)."""
        try:
            self.config = await self.load_config()
            self.inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            return Plan(self.name, error=str(err))
        self.replan()
        served = [
            f"{r.name}: {len(r.devices)} devices on {self.plugin_dir.rstrip('/')}/{r.socket}"
            for r in self.advertised.resources
            if r.devices
        ]
        how = (
            f"MIG strategy {self.config.mig_strategy} (labels.mig_strategy), device IDs by "
            f"{self.config.device_id_strategy}, Allocate with {', '.join(self.config.device_list_strategy)}"
        )
        evidence = (*served, how)
        return Plan(self.name, evidence=evidence, warnings=self.advertised.problems)
