"""The composition root: the one place that picks real or simulated parts and builds the agent's Context.

Everything that differs between a node and the simulator is decided here and nowhere else:

- the host root (the real one, or a sandbox directory laid out like a GPU node);
- the GPU backend (NVML, the simulator, or none when no enabled subsystem needs a GPU);
- runtime control (the real containerd/CRI-O/docker, or a recorder), the kernel-module loader (modprobe, or
  the sandbox's /proc/modules) and how device nodes are made (mknod, or placeholder files);
- what changes MIG layouts (the simulator, with its state kept in the sandbox, or NVML's control);
- how the Kubernetes API client is built (in-cluster, a kubeconfig, or the test API server), and the
  kubelet's PodResources client and the file watches (through the root, so in the sandbox in simulation);
- the simulator's own HTTP routes (``/debug/sim/*``), which exist only in simulation.

Subsystems receive the finished ``Context`` and never ask whether they are simulated.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from nodeagent import subsystem_table
from nodeagent.backends import chardevs
from nodeagent.backends.gpu.protocols import GpuBackend, MigControl
from nodeagent.backends.hostfs import Root
from nodeagent.backends.journal import BackupJournal
from nodeagent.backends.kmod import Modprobe, ModuleLoader
from nodeagent.backends.runtimectl import HostRuntimeControl, RuntimeControl, SimRuntimeControl
from nodeagent.backends.watch import FileWatcher
from nodeagent.errors import ConfigError
from nodeagent.events import EventBus
from nodeagent.gpustate import GpuState
from nodeagent.model.gpu import Inventory
from nodeagent.nodegateway import NodeGateway
from nodeagent.selfmetrics import SelfMetrics
from nodeagent.settings import KubeSettings, Settings
from nodeagent.subsystem import (
    Backends,
    Context,
    DeviceNodeMaker,
    KubeConnector,
    PodResourcesConnector,
    Service,
    StatusBoard,
)

if TYPE_CHECKING:
    from nodeagent.backends.podresources import PodResourcesClient
    from nodeagent.kube.client import KubeClient

SIM_STATE_FILE = "sim-mig-state.json"
"""The simulated GPUs' MIG state, under ``agent.state_dir`` in the sandbox: it outlives the process."""
SIM_DRIVER_VERSION = "580.159.04"
SIM_RUNTIME_VERSION = "1.6.20"
"""The containerd version the simulated runtime reports unless ``runtime.containerd_version`` says."""


@dataclass
class Parts:
    """What every command needs: the context and the enabled subsystems, built but not started."""

    ctx: Context
    subsystems: list[Service]
    simulated: bool = False

    @property
    def inventory(self) -> Inventory | None:
        return self.ctx.gpu_state.inventory


# ------------------------------------------------------------------------------------------- choices


def backend_kind(settings: Settings) -> str:
    """``sim`` or ``nvml``: ``gpu.backend = "auto"`` means the simulator when simulation is on."""
    if settings.gpu.backend == "auto":
        return "sim" if settings.simulation.enabled else "nvml"
    return settings.gpu.backend


def make_gpu_backend(settings: Settings, *, driver_root: str | None = None) -> GpuBackend:
    """The backend the settings ask for, not yet opened. ConfigError for a bad simulation profile/layout."""
    if backend_kind(settings) == "sim":
        from nodeagent.backends.gpu.sim.backend import SimGpuBackend

        sim = settings.simulation
        return SimGpuBackend(
            sim.profile, sim.count, sim.seed, mig_layout=sim.mig_layout, call_timeout_s=settings.gpu.call_timeout_s
        )
    from nodeagent.backends.gpu.nvml.backend import NvmlBackend

    return NvmlBackend(call_timeout_s=settings.gpu.call_timeout_s, driver_root=driver_root)


async def open_gpu_backend(settings: Settings, *, driver_root: str | None = None) -> GpuBackend:
    """Make the backend and open it. Raises BackendUnavailable (with the reason) or ConfigError."""
    backend = make_gpu_backend(settings, driver_root=driver_root)
    try:
        await backend.open()
    except BaseException:
        await backend.close()
        raise
    return backend


def mig_control_for(gpus: GpuBackend, settings: Settings) -> MigControl | None:
    """What changes MIG layouts: the simulator itself, NVML's control beside the NVML backend, or nothing."""
    if isinstance(gpus, MigControl):
        return gpus
    from nodeagent.backends.gpu.nvml.backend import NvmlBackend

    if not isinstance(gpus, NvmlBackend):
        return None
    from nodeagent.backends.gpu.nvml.mig import NvmlMigControl

    driver_root = settings.driver.root
    smi = "nvidia-smi" if not driver_root or driver_root == "/" else driver_root.rstrip("/") + "/usr/bin/nvidia-smi"
    return NvmlMigControl(gpus, nvidia_smi=smi)


def keep_sim_state(gpus: GpuBackend, root: Root, settings: Settings) -> None:
    """Give the simulator its MIG state file in the sandbox, so two commands on one sandbox see the same GPUs."""
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend

    if isinstance(gpus, SimGpuBackend):
        gpus.use_state_file(root.resolve(settings.agent.state_dir) / SIM_STATE_FILE)


@dataclass(frozen=True)
class OpenedGpus:
    """What the one-shot ``nodeagent mig`` commands work with (``mig.commands.GpuAccess``)."""

    root: Root
    gpus: GpuBackend
    """Opened; the command closes it."""
    mig_control: MigControl | None
    pod_resources: PodResourcesConnector


async def open_gpus(settings: Settings) -> OpenedGpus:
    """For the one-shot ``nodeagent mig`` commands: the host root, the opened GPU backend, its MIG control and
    the kubelet's PodResources client (through the root), as the agent's context has them."""
    root = choose_root(settings)
    gpus = await open_gpu_backend(settings, driver_root=driver_root_for_nvml(settings, root))
    if not settings.simulation.enabled:
        keep_sim_state(gpus, root, settings)
        return OpenedGpus(root, gpus, mig_control_for(gpus, settings), pod_resources_connector(root))
    from nodeagent.backends.sim.migcaps import sandbox_mig_control

    await lay_out_sandbox(root, gpus, settings)
    control = sandbox_mig_control(mig_control_for(gpus, settings), gpus, root)
    return OpenedGpus(root, gpus, control, pod_resources_connector(root))


async def lay_out_sandbox(root: Root, gpus: GpuBackend, settings: Settings) -> Inventory:
    """In simulation, whichever command runs first: the simulator keeps its MIG state in the sandbox, and a
    new sandbox (or one holding only the agent's state directory: a lock, that MIG state) is laid out like a
    GPU node with the GPUs as that state has them; in one laid out before, the MIG capabilities (and their
    /dev/nvidia-caps nodes) follow that state. Returns that inventory."""
    from nodeagent.backends.sim.sandbox import populate_sandbox, sync_mig_capabilities

    keep_sim_state(gpus, root, settings)
    inventory = await gpus.inventory()
    populate_sandbox(root, inventory, own=(settings.agent.state_dir,))
    sync_mig_capabilities(root, inventory)
    return inventory


def choose_root(settings: Settings) -> Root:
    """The host root; in simulation a sandbox directory (``agent.root`` when set, else ``simulation.sandbox``)."""
    if not settings.simulation.enabled:
        return Root(settings.agent.root)
    root_dir = settings.agent.root if settings.agent.root != "/" else settings.simulation.sandbox
    if os.path.realpath(root_dir) == "/":
        raise ConfigError("simulation never runs on the real root; set a sandbox directory", key="agent.root")
    root = Root(Path(root_dir).absolute())
    root.path.mkdir(parents=True, exist_ok=True)
    return root


def driver_root_for_nvml(settings: Settings, root: Root) -> str | None:
    """Where NVML is loaded from: the configured driver root, seen through the host root."""
    if settings.simulation.enabled or not settings.driver.root:
        return None
    return str(root.resolve(settings.driver.root))


def node_name(settings: Settings, env: Mapping[str, str]) -> str:
    return settings.agent.node_name or env.get("NODE_NAME", "") or socket.gethostname()


def make_registry() -> CollectorRegistry:
    """The agent's own Prometheus registry, with process and platform metrics."""
    reg = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


def host_backends(settings: Settings, root: Root, gpus: GpuBackend) -> Backends:
    """The real node's parts: containerd/CRI-O/docker, modprobe, mknod."""
    device_nodes: DeviceNodeMaker = _device_node_maker(placeholder=False)
    loader: ModuleLoader = Modprobe(root, timeout_s=settings.driver.modprobe_timeout_s)
    return Backends(
        gpus=gpus,
        runtime_control=HostRuntimeControl(root),
        module_loader=loader,
        device_nodes=device_nodes,
        mig_control=mig_control_for(gpus, settings),
        kube=kube_connector(root),
        pod_resources=pod_resources_connector(root),
        file_watcher=file_watcher,
    )


def simulated_backends(settings: Settings, root: Root, gpus: GpuBackend, inventory: Inventory | None) -> Backends:
    """The simulator's parts: a recording runtime control, the sandbox's modprobe, placeholder device nodes (and
    the sandbox's runtime nodes for them, which its CDI spec names)."""
    from nodeagent.backends.sim.migcaps import sandbox_mig_control
    from nodeagent.backends.sim.modprobe import SimModprobe
    from nodeagent.backends.sim.sandbox import SIM_DEV_DIR, make_sim_device_node

    version = inventory.driver_version if inventory is not None else SIM_DRIVER_VERSION
    control: RuntimeControl = SimRuntimeControl(version_text=settings.runtime.containerd_version or SIM_RUNTIME_VERSION)
    loader = SimModprobe(root, version=version, inventory=inventory)
    keep_sim_state(gpus, root, settings)
    return Backends(
        gpus=gpus,
        runtime_control=control,
        module_loader=loader,
        device_nodes=make_sim_device_node,
        mig_control=sandbox_mig_control(mig_control_for(gpus, settings), gpus, root),
        kube=kube_connector(root),
        pod_resources=pod_resources_connector(root),
        file_watcher=file_watcher,
        runtime_device_dir=SIM_DEV_DIR,
    )


def kube_connector(root: Root) -> KubeConnector:
    """The real Kubernetes client (in-cluster, or a kubeconfig read through the host root), as settings say.
    With ``kube.server`` pointing at ``nodeagent.testing.apiserver`` it talks to the test API server."""

    def connect(settings: KubeSettings) -> KubeClient | None:
        from nodeagent.kube import factory

        return factory.make_client(settings, resolve=root.resolve)

    return connect


def pod_resources_connector(root: Root) -> PodResourcesConnector:
    """The kubelet's PodResources client, its socket resolved through the host root (a sandbox in simulation)."""

    def connect(socket_path: str) -> PodResourcesClient:
        from nodeagent.backends.podresources import PodResourcesClient

        return PodResourcesClient(root, socket_path)

    return connect


def file_watcher(paths: Iterable[Path], *, poll_s: float) -> FileWatcher:
    """inotify where the kernel has it, else polling: the same on a node and in the sandbox."""
    return FileWatcher(paths, poll_s=poll_s)


def _device_node_maker(*, placeholder: bool) -> DeviceNodeMaker:
    def make(root: Root, dev_root: str, path: str, *, major: int, minor: int, mode: int) -> None:
        chardevs.make_node(root, dev_root, path, major=major, minor=minor, mode=mode, placeholder=placeholder)

    return make


# ------------------------------------------------------------------------------------------ building


def build_context(
    settings: Settings,
    *,
    root: Root,
    backends: Backends,
    node_name: str,
    registry: CollectorRegistry | None = None,
    bus: EventBus | None = None,
) -> Context:
    """A complete context: event bus, GPU-state owner, Node gateway (its client built on first use from the
    ``kube`` settings), backup journal under ``agent.state_dir``, the registry with the agent's own series
    (process, loop lag, subsystem up) and the status board they read."""
    bus = bus if bus is not None else EventBus()
    registry = registry if registry is not None else make_registry()
    board = StatusBoard()
    ctx = Context(
        settings=settings,
        root=root,
        backends=backends,
        gpu_state=GpuState(backends.gpus, bus, interval_s=settings.gpu.inventory_refresh_s),
        bus=bus,
        journal=BackupJournal(root, settings.agent.state_dir),
        registry=registry,
        board=board,
        node_name=node_name,
        self_metrics=SelfMetrics(registry, lambda: board.readiness),
        node=NodeGateway(node_name, backends.kube, lambda: ctx.settings.kube),
    )
    return ctx


def build_subsystems(ctx: Context, only: list[str] | None = None) -> list[Service]:
    """Construct the enabled subsystems (they register their HTTP routes here)."""
    return [entry.load()(ctx) for entry in subsystem_table.enabled(ctx.settings, only or [])]


async def compose(settings: Settings, env: Mapping[str, str], *, only: list[str] | None = None) -> Parts:
    """Pick the root and every backend, lay out the sandbox in simulation, build the context and subsystems."""
    from nodeagent.backends.gpu.nogpu import NoGpuBackend

    simulate = settings.simulation.enabled
    root = choose_root(settings)
    gpus: GpuBackend
    if simulate or any(e.needs_gpu for e in subsystem_table.enabled(settings, only or [])):
        gpus = await open_gpu_backend(settings, driver_root=driver_root_for_nvml(settings, root))
    else:
        gpus = NoGpuBackend()
    if simulate:
        inventory = await lay_out_sandbox(root, gpus, settings)  # with the MIG state an earlier run kept there
        backends = simulated_backends(settings, root, gpus, inventory)
    else:
        inventory = await gpus.inventory()
        backends = host_backends(settings, root, gpus)
    ctx = build_context(settings, root=root, backends=backends, node_name=node_name(settings, env))
    ctx.gpu_state.seed(inventory)
    if simulate:
        from nodeagent.backends.gpu.sim.debug import debug_routes

        for method, path, handler in debug_routes(gpus):
            ctx.add_route(method, path, handler)
    return Parts(ctx=ctx, subsystems=build_subsystems(ctx, only), simulated=simulate)
