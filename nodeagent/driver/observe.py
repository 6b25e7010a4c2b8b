"""One blocking read of everything the driver subsystem decides on (run it off the loop).

Bad input never raises out of here: a malformed /proc file or a missing folder becomes an entry in
``problems`` (failures) or ``notes`` (degraded), each naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeagent.backends import chardevs as nodes_backend
from nodeagent.backends.chardevs import NodeState
from nodeagent.backends.hostfs import Root
from nodeagent.driver import devnodes, discovery, helpers, modules, versions
from nodeagent.errors import ConfigError, HostPathError
from nodeagent.model.driver import HelperStatus

InputError = (ConfigError, HostPathError)


@dataclass
class DriverObservation:
    selection: discovery.RootSelection
    dev_root: str
    root_in_agent: str = ""
    dev_root_in_agent: str = ""
    loaded: modules.LoadedModules | None = None
    kernel: versions.KernelVersion | None = None
    sys_version: str = ""
    majors: dict[str, int] | None = None
    gpu_minors: list[int] = field(default_factory=list)
    capabilities: list[devnodes.Capability] | None = None
    """None when /proc/driver/nvidia/capabilities is missing."""
    existing_nodes: dict[str, NodeState | None] = field(default_factory=dict)
    helpers: tuple[HelperStatus, ...] = ()
    nvswitch: bool = False
    problems: list[str] = field(default_factory=list)
    """Bad input that makes the driver unusable (garbage in a version file, unreadable /proc/modules)."""
    notes: list[str] = field(default_factory=list)
    """Bad or missing input that leaves the driver usable (no capabilities folder)."""


def _local(root: Root, host_path: str) -> str:
    return str(root.path / host_path.lstrip("/")) if host_path != "/" else str(root.path)


def gather(root: Root, *, driver_root: str, dev_root: str) -> DriverObservation:
    obs = DriverObservation(discovery.select_root(root, driver_root), dev_root)
    if obs.selection.files is not None:
        obs.root_in_agent = _local(root, obs.selection.files.root)
    obs.dev_root_in_agent = _local(root, dev_root)
    try:
        obs.loaded = modules.read_loaded(root)
    except InputError as err:
        obs.problems.append(f"cannot tell which modules are loaded: {err}")
    if obs.loaded is not None and obs.loaded.is_loaded("nvidia"):
        _read_kernel_side(root, obs)
    obs.helpers, obs.nvswitch = helpers.helper_statuses(root)
    return obs


def _read_kernel_side(root: Root, obs: DriverObservation) -> None:
    try:
        text = root.read_text(versions.PROC_VERSION)
        if text is None:
            obs.problems.append(f"{versions.PROC_VERSION} is missing although the nvidia module is loaded")
        else:
            obs.kernel = versions.parse_proc_version(text)
    except InputError as err:
        obs.problems.append(f"unreadable driver version: {err}")
    try:
        text = root.read_text(versions.SYS_VERSION)
        if text is not None:
            obs.sys_version = versions.parse_sys_version(text)
    except InputError as err:
        obs.problems.append(f"unreadable driver version: {err}")
    try:
        text = root.read_text(devnodes.PROC_DEVICES)
        if text is None:
            obs.problems.append(f"{devnodes.PROC_DEVICES} is missing")
        else:
            obs.majors = devnodes.parse_proc_devices(text)
    except InputError as err:
        obs.problems.append(f"cannot read device majors: {err}")
    for bus_id in root.listdir(devnodes.PROC_GPUS):
        path = f"{devnodes.PROC_GPUS}/{bus_id}/information"
        try:
            text = root.read_text(path)
            if text is not None:
                obs.gpu_minors.append(devnodes.parse_gpu_minor(text, path))
        except InputError as err:
            obs.notes.append(f"GPU {bus_id} skipped: {err}")
    if root.is_dir(devnodes.CAPABILITIES):
        obs.capabilities = _capabilities(root, obs)
    else:
        obs.notes.append(
            f"{devnodes.CAPABILITIES} is missing: nvidia-caps device nodes (MIG access) cannot be planned "
            "(drivers older than 450 have no capabilities)"
        )
    wanted = devnodes.wanted_nodes(
        obs.majors or {},
        obs.gpu_minors,
        obs.capabilities or [],
        modeset=obs.loaded is not None and obs.loaded.is_loaded("nvidia-modeset"),
    )
    obs.existing_nodes = {n.path: nodes_backend.inspect(root, obs.dev_root, n.path) for n in wanted}


def _capabilities(root: Root, obs: DriverObservation) -> list[devnodes.Capability]:
    """The MIG capabilities (mig/config, mig/monitor, gpu*/mig/gi*[/ci*]/access); fabric-imex-mgmt and
    other capabilities get their nodes on demand from their own tools."""
    out: list[devnodes.Capability] = []
    for path, local in root.walk_files(devnodes.CAPABILITIES):
        if "/mig/" not in path + "/":
            continue
        try:
            out.append(devnodes.parse_capability(local.read_text(encoding="utf-8"), path))
        except InputError as err:
            obs.notes.append(f"capability skipped: {err}")
        except (OSError, UnicodeDecodeError) as err:
            obs.notes.append(f"capability skipped: {path}: cannot read: {err}")
    return out
