"""The settings tree: one frozen, typed section per concern, every key's default, meaning and check.

Every key's default and meaning lives here and nowhere else; ``python -m nodeagent.settings`` renders
them to docs/configuration.md (a test keeps that file in step). ``loading.py`` builds the tree from the
TOML file, the environment and flags; ``scoping.py`` makes a subsystem's view of it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

SETTINGS_VERSION = 1

Check = Callable[[Any], str | None]
"""A value check: returns an error message, or None when the value is fine."""


def opt(default: Any, doc: str, *, check: Check | None = None) -> Any:
    """A settings field with its documentation and an optional value check."""
    meta = {"doc": doc, "check": check}
    if isinstance(default, list | dict):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return field(default=default, metadata=meta)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _listen_address(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, e.g. 127.0.0.1:9400 or 0.0.0.0:9400"
    return None


def _absolute(value: str) -> str | None:
    return None if value == "" or value.startswith("/") else "must be an absolute path"


def _version_string(value: str) -> str | None:
    if value == "":
        return None
    parts = value.split(".")
    return None if all(p.isdigit() for p in parts) and 1 <= len(parts) <= 3 else "must look like 550 or 550.54.15"


# --------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class AgentSettings:
    root: str = opt("/", "Host root: `/` on bare metal, `/host` in the DaemonSet; a sandbox in simulation.")
    listen: str = opt(
        "127.0.0.1:9400",
        "HTTP listener for /metrics, /healthz, /readyz, /status. Use 0.0.0.0:9400 in the DaemonSet.",
        check=_listen_address,
    )
    log_format: Literal["auto", "json", "console"] = opt("auto", "`auto` writes JSON unless stdout is a terminal.")
    log_level: Literal["debug", "info", "warning", "error"] = opt("info", "Lowest level logged.")
    state_dir: str = opt(
        "/var/lib/nodeagent",
        "Host path (under the root) for the agent's state: the backup journal used by revert.",
        check=_absolute,
    )
    node_name: str = opt("", "Node name for labels and metrics; empty means $NODE_NAME, else the host name.")
    only: list[str] = opt([], "Restrict plan/apply/run to these subsystems (empty: all enabled ones).")
    shutdown_timeout_s: float = opt(
        10.0, "Seconds each subsystem gets to stop on SIGTERM before it is cancelled.", check=at_least(0.1)
    )
    hard_exit_timeout_s: float = opt(
        25.0,
        "Seconds after SIGTERM when the process exits regardless; keep below terminationGracePeriodSeconds.",
        check=at_least(1),
    )
    restart_backoff_initial_s: float = opt(
        1.0, "First delay before a failed subsystem is restarted.", check=at_least(0.01)
    )
    restart_backoff_max_s: float = opt(
        60.0, "Longest delay between restarts of a failing subsystem.", check=at_least(0.01)
    )


@dataclass(frozen=True)
class SimulationSettings:
    enabled: bool = opt(False, "Run against simulated GPUs and a sandbox host root instead of the real node.")
    profile: str = opt(
        "h100-80gb-hbm3",
        "Simulated GPU model: a built-in one (`nodeagent sim profiles` lists them) or a JSON profile file.",
    )
    count: int = opt(
        8, "Number of simulated GPUs.", check=lambda v: None if 1 <= v <= 64 else "must be between 1 and 64"
    )
    seed: int = opt(0, "Seed for UUIDs, bus ids and readings; the same seed gives the same node.")
    sandbox: str = opt(
        "./.nodeagent/sim",
        "Sandbox root used when simulation is on and no --root is given; populated like a GPU node when empty.",
    )
    mig_layout: str = opt(
        "",
        "MIG instances created on every simulated MIG-capable GPU at start, e.g. `1g.10gb*7` or "
        "`3g.40gb,4g.40gb`, compute instances as `1c.3g.40gb*3`; empty leaves MIG disabled.",
    )


@dataclass(frozen=True)
class GpuSettings:
    backend: Literal["auto", "nvml", "sim"] = opt("auto", "`auto`: the simulator when simulation is on, else NVML.")
    call_timeout_s: float = opt(
        5.0, "Timeout of one NVML call; a call that hangs longer marks its GPU degraded.", check=at_least(0.01)
    )
    inventory_refresh_s: float = opt(
        30.0, "How often the GPU inventory is fetched again (it is also fetched after a MIG change).", check=at_least(1)
    )


@dataclass(frozen=True)
class DriverSettings:
    enabled: bool = opt(True, "Run the driver subsystem (everything else waits for it).")
    root: str = opt(
        "",
        "Driver root (libraries and binaries). Empty: the first of /, /run/nvidia/driver, "
        "/home/kubernetes/bin/nvidia, /usr/local/nvidia that holds a driver.",
        check=_absolute,
    )
    dev_root: str = opt("/", "Where /dev/nvidia* live, as seen from the host root.", check=_absolute)
    load_modules: bool = opt(False, "Load missing kernel modules with modprobe.")
    enable_rdma: bool = opt(False, "Also load nvidia-peermem (GPUDirect RDMA).")
    module_params: dict[str, list[str]] = opt(
        {}, 'Parameters per module, e.g. {nvidia = ["NVreg_EnableGpuFirmware=1"]}.'
    )
    modprobe_timeout_s: float = opt(60.0, "Timeout of one modprobe.", check=at_least(1))
    min_version: str = opt("", "Minimum driver version, e.g. 535.104.05; older is a failure.", check=_version_string)
    validations_dir: str = opt(
        "/run/nvidia/validations",
        "Where the GPU Operator-compatible validation files (driver-ready, toolkit-ready) are written.",
        check=_absolute,
    )
    recheck_s: float = opt(
        30.0,
        "How often the driver state (modules, versions, device nodes, helpers) is checked again.",
        check=at_least(1),
    )


@dataclass(frozen=True)
class RuntimeSettings:
    enabled: bool = opt(True, "Run the container-runtime configuration subsystem.")
    engine: Literal["auto", "containerd", "crio", "docker"] = opt("auto", "Which runtime to configure.")
    distribution: Literal["auto", "plain", "k0s", "k3s", "rke2", "microk8s"] = opt(
        "auto", "containerd layout; `auto` detects it from the files on disk."
    )
    config_path: str = opt("", "Runtime config file; empty: the engine's and distribution's default.", check=_absolute)
    socket: str = opt("", "Runtime socket; empty: the distribution's default.", check=_absolute)
    runtime_class: str = opt("nvidia", "Runtime handler name (= RuntimeClass handler).")
    runtime_path: str = opt(
        "/usr/bin/nvidia-container-runtime", "Binary of the runtime that is added.", check=_absolute
    )
    set_as_default: bool = opt(
        False,
        "Make the added runtime the default one (the previous default is recorded). false takes back a default "
        "nodeagent set (containerd, CRI-O); a default naming nvidia's handler that someone else set (nvidia-ctk, "
        "the GPU Operator) is kept with a warning on containerd and docker (GPU pods may rely on it), removed on "
        "CRI-O (docs/parity.md, Default runtime).",
    )
    enable_cdi: bool = opt(
        False,
        "Enable CDI in the runtime (containerd: `enable_cdi = true`, not written from containerd 2.2, where CDI "
        "is always on; CRI-O: always on; docker: `features.cdi`).",
    )
    restart: Literal["auto", "systemd", "signal", "none"] = opt(
        "auto", "How the runtime is restarted after a change (containerd: auto = systemd restart)."
    )
    config_source: Literal["file", "command"] = opt(
        "file", "Read the current config from the files (`file`) or from `containerd config dump` (`command`)."
    )
    containerd_version: str = opt("", "containerd version; empty: detect from the binary.", check=_version_string)
    health_timeout_s: float = opt(30.0, "How long the runtime has to come back healthy after a restart.")
    restart_command: list[str] = opt(
        [],
        "Program and arguments that restart the runtime, run instead of `systemctl` by `auto`/`systemd` "
        "(for runtimes under another supervisor); empty: systemctl.",
    )
    log_path: str = opt(
        "",
        "Log file of a runtime not under systemd, read for its own error after a failed restart; "
        "empty: the systemd journal.",
        check=_absolute,
    )


@dataclass(frozen=True)
class CdiSettings:
    enabled: bool = opt(True, "Generate the CDI spec.")
    spec_path: str = opt("/var/run/cdi/nvidia.yaml", "Where the CDI spec is written.", check=_absolute)
    vendor_class: str = opt("nvidia.com/gpu", "CDI kind.")
    hook_path: str = opt(
        "/usr/bin/nvidia-cdi-hook",
        "Host path of nvidia-cdi-hook (or nvidia-ctk) used by the spec's hooks.",
        check=_absolute,
    )
    driver_root_in_runtime: str = opt(
        "",
        "The driver root as the runtime sees it; empty: the driver root with the host root prefix removed.",
        check=_absolute,
    )
    other_specs: str = opt(
        "stay-out",
        "Another generator's spec for the same kind (nvidia-cdi-refresh): stay-out writes none of ours and says "
        "why; take-over removes it (backed up, restored by revert).",
        check=lambda v: None if v in ("stay-out", "take-over") else "must be stay-out or take-over",
    )


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = opt(True, "Export DCGM-style metrics on /metrics.")
    interval_s: float = opt(10.0, "Collection interval of cheap fields.", check=at_least(1))
    slow_interval_s: float = opt(
        30.0, "Collection interval of expensive fields (energy, PCIe, field batches).", check=at_least(1)
    )
    counters_csv: str = opt("", "dcgm-exporter counters CSV; empty: the built-in default set.")
    pod_attribution: bool = opt(True, "Add pod, namespace and container labels from the kubelet.")
    pod_refresh_s: float = opt(10.0, "How often pod attribution is refreshed.", check=at_least(1))
    hostname_label: str = opt(
        "Hostname",
        "Name of the node-name label: Hostname (released dcgm-exporter 4.x) or hostname (its main branch).",
        check=lambda v: None if v in ("Hostname", "hostname") else "must be Hostname or hostname",
    )
    mig_whole_gpu_fields: str = opt(
        "every-instance",
        "Whole-GPU fields (power, temperatures, clocks) on MIG GPUs: every-instance repeats the GPU's value on "
        "each instance series as dcgm-exporter does; first-instance puts it on the first one only (sums right).",
        check=lambda v: (
            None if v in ("every-instance", "first-instance") else "must be every-instance or first-instance"
        ),
    )
    xid_count_window_ms: int = opt(300_000, "Window of DCGM_EXP_XID_ERRORS_COUNT (ms).", check=at_least(1))
    clock_events_count_window_ms: int = opt(300_000, "Window of DCGM_EXP_CLOCK_EVENTS_COUNT (ms).", check=at_least(1))


@dataclass(frozen=True)
class MigSettings:
    enabled: bool = opt(True, "Run the MIG subsystem (it changes nothing while `config` is empty).")
    config: str = opt(
        "", "mig-parted config to apply, as the nvidia.com/mig.config label names it; empty: MIG is left as it is."
    )
    config_file: str = opt(
        "",
        "mig-parted v1 config file (a path in the agent's filesystem); empty: the configs generated from the "
        "GPUs' own profiles, as `nodeagent mig generate-config` writes them.",
    )
    no_match: Literal["fail", "succeed"] = opt(
        "fail",
        "When no entry of the config matches any GPU of the node (e.g. a DGX Station config on an H100): `fail` "
        "(state `failed`, the reason naming the GPUs and the entries), or `succeed` as mig-parted does (the GPUs "
        "are left as they are), for fleets that label every node alike.",
    )
    pause_operands: bool = opt(
        False,
        "Around a MIG change, set the GPU Operator's `nvidia.com/gpu.deploy.<operand>` labels to "
        "`paused-for-mig-change` and wait for those pods to leave (as mig-manager does); needs `labels.node_patch`.",
    )
    operand_wait_s: float = opt(
        300.0, "Longest wait for the operand pods to leave before the change fails.", check=at_least(0)
    )


@dataclass(frozen=True)
class LabelsSettings:
    enabled: bool = opt(True, "Compute GFD-compatible node labels and publish them.")
    mig_strategy: Literal["none", "single", "mixed"] = opt("none", "GFD's MIG strategy for the labels.")
    nfd_file: bool = opt(True, "Write the labels to the NFD local feature file.")
    nfd_file_path: str = opt(
        "/etc/kubernetes/node-feature-discovery/features.d/nodeagent",
        "Host path of the NFD local feature file.",
        check=_absolute,
    )
    node_patch: bool = opt(False, "Merge-patch the labels onto the agent's own Node (needs the `kube` section).")
    node_feature: bool = opt(False, "Publish a NodeFeature object for nfd-master (needs the `kube` section).")
    runtime_classes: bool = opt(False, "Create the RuntimeClasses of the configured runtime handlers.")
    runtime_handlers: list[str] = opt(
        [], "RuntimeClass handlers to publish; empty: `runtime.runtime_class` (and what the runtime reports)."
    )
    timestamp: bool = opt(True, "Publish `nvidia.com/gfd.timestamp` (the agent's start time).")
    sharing_strategy: Literal["auto", "none", "time-slicing", "mps"] = opt(
        "auto",
        "The GPU sharing the replicas and sharing labels (`nvidia.com/gpu.replicas`, `.sharing-strategy`, the "
        "`-SHARED` product) say. `auto`: follow nodeagent's device plugin when `deviceplugin.enabled`, from the "
        "same keys and config file it uses (`deviceplugin.replicas`, `replicas_per_gpu`, `rename_by_default`, "
        "`deviceplugin.config_file`'s `sharing.timeSlicing`; per-GPU replicas are labelled with the value for all "
        "devices, else the first), and `none` without it. Any other value overrides that (NVIDIA's device plugin "
        "serving the GPUs, or MPS): `none`, or `time-slicing`/`mps` with `labels.replicas` for `nvidia.com/gpu`.",
    )
    replicas: int = opt(
        1,
        "Replicas per GPU under time-slicing or MPS, used only when `labels.sharing_strategy` is `time-slicing` or "
        "`mps` (with `auto` the device plugin's replicas are labelled).",
        check=at_least(1),
    )
    machine_type_file: str = opt(
        "/sys/class/dmi/id/product_name", "Host file with the machine type (`gpu.machine`).", check=_absolute
    )
    start_jitter_s: float = opt(
        10.0, "Spread the first API writes after a start over this many seconds (a fleet restarting at once)."
    )
    retry_max_s: float = opt(
        300.0, "Longest wait between attempts while the API server is unhealthy.", check=at_least(1)
    )
    resync_s: float = opt(
        3600.0, "Re-check NodeFeature and RuntimeClasses this often (the Node is watched).", check=at_least(10)
    )


@dataclass(frozen=True)
class GpuHealthSettings:
    enabled: bool = opt(True, "Classify XIDs and GPU health into the NvidiaGpuHealthy Node condition and metrics.")
    ignored_xids: list[int] = opt(
        [13, 31, 43, 45, 68, 109],
        "XIDs that say nothing about the GPU (application faults); the device plugin's default ignore list.",
    )
    xid_window_s: float = opt(
        600.0, "An XID keeps its GPU unhealthy this long after it was last seen.", check=at_least(1)
    )
    taint: bool = opt(False, "Taint the Node `nvidia.com/gpu.unhealthy:NoSchedule` while a GPU is unhealthy.")
    min_publish_interval_s: float = opt(
        30.0, "At most one health change per this interval reaches the Node (a flapping GPU).", check=at_least(0)
    )


@dataclass(frozen=True)
class KubeletSettings:
    """The node's kubelet, shared by every subsystem that talks to it (metrics, MIG, the device plugin)."""

    pod_resources_socket: str = opt(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        "The kubelet's PodResources socket (which pod holds which device).",
        check=_absolute,
    )
    device_plugins_dir: str = opt(
        "/var/lib/kubelet/device-plugins",
        "The kubelet's device-plugin directory (its registration socket `kubelet.sock` and the plugins' sockets).",
        check=_absolute,
    )
    root_dir: str = opt(
        "/var/lib/kubelet",
        "The kubelet's root directory (`--root-dir`): the DRA plugin registers in `plugins_registry/` under it and "
        "serves in `plugins/gpu.nvidia.com/`.",
        check=_absolute,
    )


@dataclass(frozen=True)
class WatchSettings:
    """How the agent notices changes to the files it owns (drift), shared by every subsystem that writes files."""

    poll_s: float = opt(1.0, "Polling period of the file watches where inotify is unavailable.", check=at_least(0.01))


@dataclass(frozen=True)
class KubeSettings:
    mode: Literal["auto", "in-cluster", "kubeconfig", "off"] = opt(
        "auto", "`auto`: the pod's service account in a pod, else `kubeconfig` when set, else no API server."
    )
    kubeconfig: str = opt("", "Host path of a kubeconfig (the kubelet's on bare metal).", check=_absolute)
    context: str = opt("", "Kubeconfig context; empty: its current context.")
    namespace: str = opt("", "Namespace for NodeFeature and Events; empty: the service account's.")
    timeout_s: float = opt(10.0, "Timeout of one API request.", check=at_least(0.1))
    max_attempts: int = opt(5, "Attempts per request before it is reported as failed.", check=at_least(1))


from nodeagent.deviceplugin.settings import DevicePluginSettings  # noqa: E402 - its section, defined with opt above
from nodeagent.dra.settings import DraSettings  # noqa: E402 - its section, defined with opt above


@dataclass(frozen=True)
class Settings:
    version: int = opt(SETTINGS_VERSION, "Settings format version; must be 1.")
    agent: AgentSettings = field(default_factory=AgentSettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    driver: DriverSettings = field(default_factory=DriverSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    cdi: CdiSettings = field(default_factory=CdiSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    mig: MigSettings = field(default_factory=MigSettings)
    labels: LabelsSettings = field(default_factory=LabelsSettings)
    gpuhealth: GpuHealthSettings = field(default_factory=GpuHealthSettings)
    deviceplugin: DevicePluginSettings = field(default_factory=DevicePluginSettings)
    dra: DraSettings = field(default_factory=DraSettings)
    kubelet: KubeletSettings = field(default_factory=KubeletSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)

    def with_sections(self, sections: dict[str, Any]) -> Settings:
        """A copy with whole sections replaced (the reload rule keeps the agent's own sections)."""
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else typing.get_type_hints(Settings)[f.name]
    for f in dataclasses.fields(Settings)
    if f.name != "version"
}


def changed_sections(old: Settings, new: Settings) -> list[str]:
    """The names of the sections whose values differ, in the order the settings declare them."""
    return [name for name in SECTIONS if getattr(old, name) != getattr(new, name)]


def replace(settings: Settings, section: str, **changes: Any) -> Settings:
    """A copy of ``settings`` with some keys of one section changed (for tests and CLI defaults)."""
    return dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **changes)})
