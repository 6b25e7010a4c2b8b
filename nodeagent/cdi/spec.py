"""CDI spec generation (pure): driver facts + GPU inventory → a spec the runtime can load.

Devices: every GPU by index and by UUID, every MIG device as ``<gpu>:<mig index>`` and by MIG UUID, and
``all``. A GPU with DRM nodes also gets them (``/dev/dri/cardN``, ``renderDN``) and a create-symlinks hook
for their ``/dev/dri/by-path`` links. The shared ``containerEdits`` carry the control device nodes, the
driver's libraries, binaries, GSP firmware, IPC sockets and graphics files as read-only bind mounts, and
the hooks nvidia-ctk's spec has, in its order: create-symlinks, enable-cuda-compat
(``--host-driver-version``, for CUDA forward-compatibility images), update-ldcache,
disable-device-node-modification and update-application-profile (nvidia-ctk 1.20: it restricts EGL and
Vulkan to the GPUs mounted in the container); every hook's path is the configured hook binary only. Libraries go
to the container's library directory for the node's architecture (``/usr/lib/aarch64-linux-gnu`` on
Grace). Host paths are mapped from the driver root the agent reads to the driver root the runtime
sees; ``cdiVersion`` is the lowest version the content needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from nodeagent.backends.chardevs import mig_cap_minor
from nodeagent.cdi.graphics import GraphicsFiles
from nodeagent.model.driver import DriverFacts
from nodeagent.model.gpu import GpuInfo, Inventory, MigDevice

CONTAINER_LIB_DIR = "/usr/lib/x86_64-linux-gnu"
"""The x86_64 default; ``container_lib_dir(arch)`` for others."""
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64", "ppc64le": "powerpc64le"}
"""Machine names (uname -m, Go's GOARCH) → the Debian multiarch triplet's first part."""
CONTAINER_BIN_DIR = "/usr/bin"
MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "rbind", "rprivate")
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
IPC_PATHS = ("/run/nvidia-persistenced/socket", "/run/nvidia-fabricmanager/socket", "/tmp/nvidia-mps")

# Released CDI versions in order; 0.3.0 is the earliest that runtimes still load.
VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")


@dataclass(frozen=True)
class CdiOptions:
    kind: str = "nvidia.com/gpu"
    hook_path: str = "/usr/bin/nvidia-cdi-hook"
    root_in_runtime: str = ""
    """The driver root as the runtime sees it; empty: the driver root itself."""
    arch: str = "x86_64"
    """The node's architecture (``arch_of``): where libraries go in the container."""


def container_lib_dir(arch: str) -> str:
    return f"/usr/lib/{ARCHES.get(arch, arch)}-linux-gnu"


def arch_of(facts: DriverFacts, machine: str) -> str:
    """The architecture of the driver's libraries (their multiarch directory), else the machine's."""
    for lib in facts.files.libraries:
        for part in PurePosixPath(lib.directory).parts:
            head, sep, _ = part.partition("-linux-gnu")
            if sep and head in ARCHES:
                return ARCHES[head]
    return ARCHES.get(machine, machine)


def map_path(path: str, agent_root: str, runtime_root: str) -> str:
    """Re-root ``path`` from the driver root the agent sees to the one the runtime sees.

    ``map_path('/host/home/kubernetes/bin/nvidia/lib64/x', '/host/home/kubernetes/bin/nvidia',
    '/home/kubernetes/bin/nvidia')`` is ``/home/kubernetes/bin/nvidia/lib64/x``. Paths outside the
    agent's root are returned unchanged.
    """
    src = PurePosixPath(agent_root)
    p = PurePosixPath(path)
    if p != src and src not in p.parents:
        return path
    return str(PurePosixPath(runtime_root, p.relative_to(src)))


def _dev(facts: DriverFacts, path: str) -> dict[str, Any]:
    node: dict[str, Any] = {"path": path}
    if facts.dev_root != "/":
        node["hostPath"] = str(PurePosixPath(facts.dev_root, path.lstrip("/")))
    return node


def _mount(host: str, container: str) -> dict[str, Any]:
    return {"hostPath": host, "containerPath": container, "options": list(MOUNT_OPTIONS)}


def _hook(opts: CdiOptions, sub: str, args: Sequence[str]) -> dict[str, Any]:
    binary = PurePosixPath(opts.hook_path).name
    lead = [binary, "hook", sub] if binary == "nvidia-ctk" else [binary, sub]
    return {
        "hookName": "createContainer",
        "path": opts.hook_path,
        "args": [*lead, *args],
        "env": ["NVIDIA_CTK_DEBUG=false"],
    }


def _gpu_nodes(facts: DriverFacts, gpu: GpuInfo) -> list[dict[str, Any]]:
    return [_dev(facts, f"/dev/nvidia{gpu.minor_number}")]


def _mig_nodes(facts: DriverFacts, gpu: GpuInfo, mig: MigDevice) -> list[dict[str, Any]]:
    gi = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id)
    ci = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id, mig.compute_instance_id)
    return [
        *_gpu_nodes(facts, gpu),
        _dev(facts, f"/dev/nvidia-caps/nvidia-cap{gi}"),
        _dev(facts, f"/dev/nvidia-caps/nvidia-cap{ci}"),
    ]


def device_node_paths(inventory: Inventory) -> list[str]:
    """Every per-device node path the spec will name (below the dev root), each once (a GPU instance with
    several compute instances has one node of its own)."""
    out: dict[str, None] = {}
    for gpu in inventory.gpus:
        out[f"/dev/nvidia{gpu.minor_number}"] = None
        for mig in gpu.mig_devices:
            out[f"/dev/nvidia-caps/nvidia-cap{mig_cap_minor(gpu.minor_number, mig.gpu_instance_id)}"] = None
            ci = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id, mig.compute_instance_id)
            out[f"/dev/nvidia-caps/nvidia-cap{ci}"] = None
    return list(out)


def _devices(
    facts: DriverFacts, inventory: Inventory, opts: CdiOptions, graphics: GraphicsFiles
) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    all_nodes: list[dict[str, Any]] = []
    all_links: list[str] = []
    for gpu in sorted(inventory.gpus, key=lambda g: g.index):
        nodes = _gpu_nodes(facts, gpu)
        edits: dict[str, Any] = {"deviceNodes": nodes}
        drm = graphics.drm.get(gpu.index)
        if drm is not None:
            nodes += [_dev(facts, n) for n in drm.nodes]
            if drm.by_path:
                edits["hooks"] = [_hook(opts, "create-symlinks", _link_args(drm.by_path))]
                all_links.extend(drm.by_path)
        for name in (str(gpu.index), gpu.uuid):
            devices.append({"name": name, "containerEdits": edits})
        all_nodes.extend(nodes)
    for gpu in sorted(inventory.gpus, key=lambda g: g.index):
        for mig in sorted(gpu.mig_devices, key=lambda m: m.mig_index):
            nodes = _mig_nodes(facts, gpu, mig)
            for name in (f"{gpu.index}:{mig.mig_index}", mig.uuid):
                devices.append({"name": name, "containerEdits": {"deviceNodes": nodes}})
            all_nodes.extend(n for n in nodes if n not in all_nodes)
    all_edits: dict[str, Any] = {"deviceNodes": all_nodes}
    if all_links:
        all_edits["hooks"] = [_hook(opts, "create-symlinks", _link_args(all_links))]
    devices.append({"name": "all", "containerEdits": all_edits})
    return devices


def _link_args(links: Sequence[str]) -> list[str]:
    return [a for link in links for a in ("--link", link)]


def _common(facts: DriverFacts, opts: CdiOptions, ipc: Sequence[str], graphics: GraphicsFiles) -> dict[str, Any]:
    files = facts.files
    runtime_root = opts.root_in_runtime or facts.root_in_runtime or files.root
    lib_dir = container_lib_dir(opts.arch)

    def host(path: str) -> str:
        return map_path(path, files.root, runtime_root)

    mounts: list[dict[str, Any]] = []
    links: list[str] = []
    lib_dirs: list[str] = []
    for lib in sorted(files.libraries, key=lambda x: x.path):
        sub = "/vdpau" if lib.directory.endswith("/vdpau") else ""
        cdir = lib_dir + sub
        mounts.append(_mount(host(lib.path), f"{cdir}/{lib.name}"))
        links.extend(f"{lib.name}::{cdir}/{link}" for link in lib.links)
        if cdir not in lib_dirs:
            lib_dirs.append(cdir)
    for binary in files.binaries:
        mounts.append(_mount(host(binary), f"{CONTAINER_BIN_DIR}/{PurePosixPath(binary).name}"))
    for fw in files.firmware:
        name = PurePosixPath(fw)
        mounts.append(_mount(host(fw), f"/lib/firmware/nvidia/{name.parent.name}/{name.name}"))
    for path in ipc:
        mounts.append(_mount(host(path), path))
    mounts += _graphics_mounts(graphics, files.root, lib_dir, host)
    links += _graphics_links(graphics, files.root, lib_dir, files.library_version)
    hooks = []
    if links:
        hooks.append(_hook(opts, "create-symlinks", _link_args(links)))
    version = files.library_version
    if version and "*" not in version:
        hooks.append(_hook(opts, "enable-cuda-compat", [f"--host-driver-version={version}"]))
    hooks.append(_hook(opts, "update-ldcache", [a for d in lib_dirs or [lib_dir] for a in ("--folder", d)]))
    hooks.append(_hook(opts, "disable-device-node-modification", []))
    # nvidia-ctk >= 1.20 always adds it last (EGL/Vulkan see only the container's GPUs); hook binaries
    # >= 1.18 skip a hook they do not know, so an older toolkit on the node still starts containers.
    hooks.append(_hook(opts, "update-application-profile", []))
    nodes = [_dev(facts, p) for p in CONTROL_NODES if p in facts.device_nodes]
    return {
        "env": ["NVIDIA_VISIBLE_DEVICES=void", f"NVIDIA_CTK_LIBCUDA_DIR={lib_dir}"],
        "deviceNodes": nodes,
        "mounts": mounts,
        "hooks": hooks,
    }


def _below_root(path: str, driver_root: str) -> str:
    """``path`` as it is below the driver root: the container path of a file mounted where it lies."""
    return "/" + str(PurePosixPath(path).relative_to(driver_root)) if driver_root != "/" else path


def _graphics_mounts(graphics: GraphicsFiles, driver_root: str, lib_dir: str, host: Any) -> list[dict[str, Any]]:
    mounts = [_mount(host(h), c) for h, c in graphics.configs]
    mounts += [_mount(host(p), f"{lib_dir}/{PurePosixPath(p).name}") for p in graphics.libraries]
    mounts += [_mount(host(p), _below_root(p, driver_root)) for p in graphics.xorg]
    return mounts


def _graphics_links(graphics: GraphicsFiles, driver_root: str, lib_dir: str, version: str) -> list[str]:
    links = []
    if graphics.allocator:  # GBM finds the NVIDIA backend through this link
        links.append(f"../libnvidia-allocator.so.1::{lib_dir}/gbm/nvidia-drm_gbm.so")
    for p in graphics.libraries:
        name = PurePosixPath(p).name
        if name == f"libnvidia-vulkan-producer.so.{version}":
            links.append(f"{name}::{lib_dir}/libnvidia-vulkan-producer.so")
    for p in graphics.xorg:
        name = PurePosixPath(p).name
        if name == f"libglxserver_nvidia.so.{version}":
            links.append(f"{name}::{PurePosixPath(_below_root(p, driver_root)).parent}/libglxserver_nvidia.so")
    return links


def required_version(spec: Mapping[str, Any]) -> str:
    """The lowest cdiVersion whose features cover ``spec`` (the CDI specification's version rules)."""
    edits = [spec.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in spec.get("devices", [])]
    need = "0.3.0"

    def bump(v: str) -> None:
        nonlocal need
        need = max(need, v, key=VERSIONS.index)

    if any(m.get("type") for e in edits for m in e.get("mounts", [])):
        bump("0.4.0")
    if any(not str(d.get("name", "a"))[:1].isalpha() for d in spec.get("devices", [])):
        bump("0.5.0")
    if any(n.get("hostPath") for e in edits for n in e.get("deviceNodes", [])):
        bump("0.5.0")
    class_ = str(spec.get("kind", "")).partition("/")[2]
    if spec.get("annotations") or any(d.get("annotations") for d in spec.get("devices", [])) or "." in class_:
        bump("0.6.0")
    if any(e.get("intelRdt") or e.get("additionalGids") for e in edits):
        bump("0.7.0")
    if any(e.get("netDevices") for e in edits):
        bump("1.1.0")
    return need


def generate(
    facts: DriverFacts,
    inventory: Inventory,
    opts: CdiOptions,
    *,
    ipc: Sequence[str] = (),
    graphics: GraphicsFiles | None = None,
) -> dict[str, Any]:
    graphics = graphics or GraphicsFiles()
    spec: dict[str, Any] = {
        "cdiVersion": "",
        "kind": opts.kind,
        "devices": _devices(facts, inventory, opts, graphics),
        "containerEdits": _common(facts, opts, ipc, graphics),
    }
    spec["cdiVersion"] = required_version(spec)
    return spec


def runtime_device_nodes(spec: Mapping[str, Any], host_dir: str) -> dict[str, Any]:
    """Simulation only (a real node's spec never goes through this): every device node's ``hostPath`` is its
    node below ``host_dir``, the sandbox's runtime device directory as the host sees it (containerd reads the
    spec on the real host, where the sandbox's /dev is not /dev); ``path`` stays the container's."""
    out: dict[str, Any] = json.loads(json.dumps(spec))  # a deep copy, plain lists and dicts
    base = host_dir.rstrip("/")
    for edits in [out.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in out.get("devices", [])]:
        for node in edits.get("deviceNodes", []):
            node["hostPath"] = base + (node.get("hostPath") or node["path"])
    out["cdiVersion"] = required_version(out)
    return out


class _PlainDumper(yaml.SafeDumper):
    """Writes shared lists out in full: runtimes' YAML readers need no anchors and people read it better."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(spec: Mapping[str, Any], fmt: str = "yaml") -> bytes:
    """YAML (default) or JSON, keys in spec order so that equal content gives equal bytes."""
    if fmt == "json":
        return (json.dumps(spec, indent=2) + "\n").encode()
    head = "# Generated by nodeagent from the driver and GPU inventory; edits are overwritten.\n"
    return (head + yaml.dump(dict(spec), Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)).encode()


def format_for(path: str) -> str:
    return "json" if path.endswith(".json") else "yaml"


def host_paths(spec: Mapping[str, Any]) -> list[str]:
    """Every host path the spec names: mounts, device nodes (hostPath or path) and hook binaries."""
    edits = [spec.get("containerEdits") or {}] + [d["containerEdits"] for d in spec.get("devices", [])]
    out: list[str] = []
    for e in edits:
        out.extend(m["hostPath"] for m in e.get("mounts", []))
        out.extend(n.get("hostPath") or n["path"] for n in e.get("deviceNodes", []))
    return sorted(set(out))
