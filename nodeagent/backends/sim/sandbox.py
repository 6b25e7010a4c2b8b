"""A sandbox host tree laid out like a real GPU node, for simulation and tests.

The formats follow a real H100 node's capture: /proc/modules with
``-`` refcounts (a kernel without module unloading), /proc/devices with the nvidia majors,
/proc/driver/nvidia/{version,gpus,capabilities}, /sys/module/<name>/{version,initstate} and no
``refcnt``.

Device nodes cannot be created by a user who is not root, so in a sandbox every /dev entry is a
*placeholder*: a regular file whose content is ``char MAJOR:MINOR`` (see ``placeholder_bytes``). The
driver subsystem reads placeholders as device nodes when simulating.

The container runtime cannot inject a placeholder into a pod (CDI wants a character device at the hostPath of
each device node, and reads it from the real host, not from the sandbox). So ``populate_sandbox`` also lays
out ``SIM_DEV_DIR`` (``/run/nodeagent/sim-dev/dev/nvidia0``, ...): one node for each of the sandbox's NVIDIA
device nodes, a real character device with the numbers of /dev/null (1:3) when the agent runs as root,
so a pod gets a harmless node under the right name and never a real GPU of the machine; a placeholder
otherwise. The CDI spec of a simulated node points its ``hostPath`` there (``path`` stays ``/dev/nvidia0``).
The sandbox's own /dev keeps the placeholders with NVIDIA's numbers, which the driver subsystem checks
against /proc/devices (a 1:3 node there would be "wrong" and replaced).

The building blocks (``write_driver_files``, ``write_kernel_state``, ...) are public so that tests can
lay out other nodes: a driver under /run/nvidia/driver, GKE's /home/kubernetes/bin/nvidia, the flat
/usr/local/nvidia listing of our GPU machine, or a node with parts missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal

from nodeagent.backends.chardevs import inspect, make_node, mig_cap_minor, placeholder_bytes
from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError
from nodeagent.model.gpu import GpuInfo, Inventory

MAJOR_FRONTEND = 195
"""/dev/nvidia<minor> and /dev/nvidiactl (minor 255)."""
MAJOR_UVM = 238
MAJOR_NVSWITCH = 239
MAJOR_NVLINK = 240
MAJOR_CAPS = 241
MAJOR_CAPS_IMEX = 242
CTL_MINOR = 255
MODESET_MINOR = 254
SIM_DEV_DIR = "/run/nodeagent/sim-dev"
"""Where the sandbox keeps the device nodes a container runtime injects (see the module's docstring)."""
NULL_DEVICE = (1, 3)
"""The numbers of /dev/null: what a pod's simulated GPU node is."""

Layout = Literal["debian", "flat"]
"""``debian``: usr/lib/x86_64-linux-gnu, usr/bin, lib/firmware (a host or a driver container rootfs).
``flat``: lib64 (+ lib -> lib64), bin, modules, version (/usr/local/nvidia, /home/kubernetes/bin/nvidia)."""


@dataclass(frozen=True)
class DriverLib:
    stem: str
    """e.g. ``libnvidia-ml``; the file is ``<stem>.so.<driver version>``."""
    soname: str | None
    """``<stem>.so.N`` link the loader uses, or None when the driver ships no soname link."""
    compute: bool
    """Part of the compute (CUDA/NVML) set injected into every GPU container."""


# The library set of the real driver root (driver-root-and-devices.txt), with its soname links.
DRIVER_LIBS: tuple[DriverLib, ...] = (
    DriverLib("libcuda", "libcuda.so.1", True),
    DriverLib("libcudadebugger", "libcudadebugger.so.1", True),
    DriverLib("libnvidia-ml", "libnvidia-ml.so.1", True),
    DriverLib("libnvidia-ptxjitcompiler", "libnvidia-ptxjitcompiler.so.1", True),
    DriverLib("libnvidia-nvvm", "libnvidia-nvvm.so.4", True),
    DriverLib("libnvidia-cfg", "libnvidia-cfg.so.1", True),
    DriverLib("libnvidia-opencl", "libnvidia-opencl.so.1", True),
    DriverLib("libnvidia-allocator", "libnvidia-allocator.so.1", True),
    DriverLib("libnvidia-gpucomp", None, True),
    DriverLib("libnvidia-pkcs11-openssl3", None, True),
    DriverLib("libnvidia-encode", "libnvidia-encode.so.1", False),
    DriverLib("libnvcuvid", "libnvcuvid.so.1", False),
    DriverLib("libnvidia-opticalflow", "libnvidia-opticalflow.so.1", False),
    DriverLib("libnvidia-fbc", "libnvidia-fbc.so.1", False),
    DriverLib("libEGL_nvidia", "libEGL_nvidia.so.0", False),
    DriverLib("libGLESv1_CM_nvidia", "libGLESv1_CM_nvidia.so.1", False),
    DriverLib("libGLESv2_nvidia", "libGLESv2_nvidia.so.2", False),
    DriverLib("libGLX_nvidia", "libGLX_nvidia.so.0", False),
    DriverLib("libnvidia-eglcore", None, False),
    DriverLib("libnvidia-glcore", None, False),
    DriverLib("libnvidia-glsi", None, False),
    DriverLib("libnvidia-glvkspirv", None, False),
    DriverLib("libnvidia-rtcore", None, False),
    DriverLib("libnvidia-tls", None, False),
    DriverLib("libnvoptix", "libnvoptix.so.1", False),
    DriverLib("libvdpau_nvidia", "libvdpau_nvidia.so.1", False),
)

DRIVER_BINS: tuple[str, ...] = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
)

GSP_FIRMWARE: tuple[str, ...] = ("gsp_ga10x.bin", "gsp_tu10x.bin")

# Sizes and load addresses as /proc/modules shows them on the real H100 (nvidia_modeset from a
# typical 580 install); refcounts are "-" there because that kernel cannot unload modules.
_MODULE_LINES = {
    "nvidia": "nvidia 14299136 - - Live 0xffffffffc0400000 (O)",
    "nvidia_uvm": "nvidia_uvm 1830912 - - Live 0xffffffffc080c000 (O)",
    "nvidia_modeset": "nvidia_modeset 1552384 - - Live 0xffffffffc0a2e000 (O)",
    "nvidia_peermem": "nvidia_peermem 16384 - - Live 0xffffffffc0b9c000 (O)",
    "nvidia_drm": "nvidia_drm 126976 - - Live 0xffffffffc0bb0000 (O)",
}

_OTHER_CHAR_DEVICES = (
    (1, "mem"),
    (4, "/dev/vc/0"),
    (4, "tty"),
    (4, "ttyS"),
    (5, "/dev/tty"),
    (5, "/dev/console"),
    (5, "/dev/ptmx"),
    (7, "vcs"),
    (10, "misc"),
    (13, "input"),
    (128, "ptm"),
    (136, "pts"),
    (203, "cpu/cpuid"),
    (243, "hidraw"),
    (248, "bsg"),
    (249, "watchdog"),
    (250, "ptp"),
    (251, "pps"),
    (252, "dax"),
)

_BLOCK_DEVICES = ((7, "loop"), (253, "zram"), (254, "virtblk"), (259, "blkext"))


def module_line(name: str) -> str:
    """The /proc/modules line of a loaded module (kernel name with underscores)."""
    kname = name.replace("-", "_")
    return _MODULE_LINES.get(kname, f"{kname} 65536 - - Live 0xffffffffc0c00000 (O)")


def proc_bus_id(gpu: GpuInfo) -> str:
    """NVML's ``00000000:18:00.0`` as /proc/driver/nvidia/gpus names it: ``0000:18:00.0``."""
    domain, _, rest = gpu.pci_bus_id.lower().partition(":")
    return f"{domain[-4:]}:{rest}" if rest else gpu.pci_bus_id.lower()


# ------------------------------------------------------------------------------------------- writers


def _write(root: Root, host_path: str, data: bytes | str, mode: int = 0o644) -> None:
    local = root.resolve(host_path)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data.encode() if isinstance(data, str) else data)
    local.chmod(mode)


def _symlink(root: Root, host_path: str, target: str) -> None:
    local = root.resolve(host_path, follow_last=False)
    local.parent.mkdir(parents=True, exist_ok=True)
    if local.is_symlink() or local.exists():
        local.unlink()
    local.symlink_to(target)


def _elf_stub(name: str) -> bytes:
    # Enough to look like a shared object to `file`; nothing loads it.
    return b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + f"nodeagent sandbox stub: {name}\n".encode()


def lib_dir(layout: Layout) -> str:
    return "usr/lib/x86_64-linux-gnu" if layout == "debian" else "lib64"


def bin_dir(layout: Layout) -> str:
    return "usr/bin" if layout == "debian" else "bin"


def firmware_dir(layout: Layout, version: str) -> str:
    return f"lib/firmware/nvidia/{version}" if layout == "debian" else f"firmware/nvidia/{version}"


def write_driver_files(
    root: Root,
    prefix: str,
    version: str,
    *,
    layout: Layout = "debian",
    libs: Iterable[DriverLib] = DRIVER_LIBS,
    bins: Iterable[str] = DRIVER_BINS,
    firmware: bool = True,
) -> None:
    """Lay out a driver's user-space files under ``prefix`` (``/`` or a driver root) in the host tree."""
    base = prefix.rstrip("/")
    libdir = f"{base}/{lib_dir(layout)}"
    for lib in libs:
        sub = "/vdpau" if lib.stem == "libvdpau_nvidia" and layout == "debian" else ""
        real = f"{lib.stem}.so.{version}"
        _write(root, f"{libdir}{sub}/{real}", _elf_stub(real), 0o755)
        if lib.soname is not None:
            _symlink(root, f"{libdir}{sub}/{lib.soname}", real)
            _symlink(root, f"{libdir}{sub}/{lib.stem}.so", lib.soname)
        else:
            _symlink(root, f"{libdir}{sub}/{lib.stem}.so", real)
    for name in bins:
        _write(root, f"{base}/{bin_dir(layout)}/{name}", _elf_stub(name), 0o755)
    if firmware:
        for fw in GSP_FIRMWARE:
            _write(root, f"{base}/{firmware_dir(layout, version)}/{fw}", b"GSP firmware stub\n")
    if layout == "flat":
        _symlink(root, f"{base}/lib", "lib64")
        _write(root, f"{base}/version", f"{version}\n")
        for mod in ("nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm", "nvidia-peermem"):
            _write(root, f"{base}/modules/{mod}.ko", _elf_stub(f"{mod}.ko"))


def proc_version_text(version: str, *, open_modules: bool = True) -> str:
    flavour = "Open Kernel Module" if open_modules else "Kernel Module"
    return (
        f"NVRM version: NVIDIA UNIX {flavour} for x86_64  {version}  Release Build  (nodeagent-sim@sandbox)  \n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14) \n"
    )


def gpu_information_text(gpu: GpuInfo, version: str) -> str:
    return (
        f"Model: \t\t {gpu.name}\n"
        f"IRQ:   \t\t {41 + gpu.minor_number}\n"
        f"GPU UUID: \t {gpu.uuid}\n"
        f"Video BIOS: \t {gpu.vbios_version.lower()}\n"
        "Bus Type: \t PCIe\n"
        "DMA Size: \t 52 bits\n"
        "DMA Mask: \t 0xfffffffffffff\n"
        f"Bus Location: \t {proc_bus_id(gpu)}\n"
        f"Device Minor: \t {gpu.minor_number}\n"
        f"GPU Firmware: \t {version}\n"
        "GPU Excluded:\t No\n"
    )


def capability_text(minor: int, mode: int) -> str:
    return f"DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"


def write_kernel_state(
    root: Root,
    inventory: Inventory,
    *,
    modules: Iterable[str] = ("nvidia", "nvidia_uvm", "nvidia_modeset"),
    kernel_version: str | None = None,
    capabilities: bool = True,
) -> None:
    """/proc/modules, /proc/devices, /proc/driver/nvidia/*, /sys/module/* as a loaded driver shows them."""
    version = kernel_version or inventory.driver_version
    loaded = [m.replace("-", "_") for m in modules]
    # /proc/modules lists the most recently loaded module first.
    _write(root, "/proc/modules", "".join(module_line(m) + "\n" for m in reversed(loaded)), 0o444)
    for mod in loaded:
        _write(root, f"/sys/module/{mod}/initstate", "live\n", 0o444)
        _write(root, f"/sys/module/{mod}/version", f"{version}\n", 0o444)
        _write(root, f"/sys/module/{mod}/taint", "O\n", 0o444)
    write_proc_devices(root, nvidia="nvidia" in loaded, uvm="nvidia_uvm" in loaded)
    if "nvidia" not in loaded:
        return
    _write(root, "/proc/driver/nvidia/version", proc_version_text(version), 0o444)
    write_gpu_information(root, inventory, version)
    if capabilities:
        write_capabilities(root, inventory)


def proc_devices_text(*, nvidia: bool = True, uvm: bool = True) -> str:
    """/proc/devices with the NVIDIA majors of the capture when the modules are loaded."""
    chars = list(_OTHER_CHAR_DEVICES)
    if nvidia:
        chars += [
            (MAJOR_FRONTEND, "nvidia"),
            (MAJOR_FRONTEND, "nvidiactl"),
            (MAJOR_NVSWITCH, "nvidia-nvswitch"),
            (MAJOR_NVLINK, "nvidia-nvlink"),
            (MAJOR_CAPS, "nvidia-caps"),
            (MAJOR_CAPS_IMEX, "nvidia-caps-imex-channels"),
        ]
    if uvm:
        chars.append((MAJOR_UVM, "nvidia-uvm"))
    chars.sort(key=lambda c: c[0])
    body = "Character devices:\n" + "".join(f"{major:3d} {name}\n" for major, name in chars)
    return body + "\nBlock devices:\n" + "".join(f"{major:3d} {name}\n" for major, name in _BLOCK_DEVICES)


def write_gpu_information(root: Root, inventory: Inventory, version: str) -> None:
    for gpu in inventory.gpus:
        _write(root, f"/proc/driver/nvidia/gpus/{proc_bus_id(gpu)}/information", gpu_information_text(gpu, version))


def write_proc_devices(root: Root, *, nvidia: bool = True, uvm: bool = True) -> None:
    _write(root, "/proc/devices", proc_devices_text(nvidia=nvidia, uvm=uvm), 0o444)


def write_capabilities(root: Root, inventory: Inventory) -> None:
    """/proc/driver/nvidia/capabilities as on a MIG node: mig/{config,monitor}, gpu<minor>/mig/gi*/ci*."""
    caps = "/proc/driver/nvidia/capabilities"
    _write(root, f"{caps}/mig/config", capability_text(1, 256), 0o444)
    _write(root, f"{caps}/mig/monitor", capability_text(2, 292), 0o444)
    _write(root, f"{caps}/fabric-imex-mgmt", capability_text(4323, 256), 0o444)
    for gpu in inventory.gpus:
        for mig in gpu.mig_devices:
            gi_dir = f"{caps}/gpu{gpu.minor_number}/mig/gi{mig.gpu_instance_id}"
            gi_minor = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id)
            ci_minor = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id, mig.compute_instance_id)
            _write(root, f"{gi_dir}/access", capability_text(gi_minor, 292), 0o444)
            _write(root, f"{gi_dir}/ci{mig.compute_instance_id}/access", capability_text(ci_minor, 292), 0o444)


def sync_mig_capabilities(root: Root, inventory: Inventory) -> list[str]:
    """What the driver (and nvidia-modprobe, which NVML calls) does when GPU and compute instances come and go:
    /proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access lists exactly the instances there are,
    and each has its /dev/nvidia-caps/nvidia-cap<minor> node (a placeholder here, and the runtime's node under
    ``SIM_DEV_DIR`` when the sandbox has one; nodes of instances that went stay, as on a real node). A sandbox
    without the capabilities directory (no driver loaded) is left alone. Returns the host paths written or
    removed."""
    caps = "/proc/driver/nvidia/capabilities"
    if not root.is_dir(caps):
        return []
    changed: list[str] = []
    wanted: dict[str, bytes] = {}
    minors: list[int] = []
    for gpu in inventory.gpus:
        for mig in gpu.mig_devices:
            gi_dir = f"{caps}/gpu{gpu.minor_number}/mig/gi{mig.gpu_instance_id}"
            gi_minor = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id)
            ci_minor = mig_cap_minor(gpu.minor_number, mig.gpu_instance_id, mig.compute_instance_id)
            wanted[f"{gi_dir}/access"] = capability_text(gi_minor, 292).encode()
            wanted[f"{gi_dir}/ci{mig.compute_instance_id}/access"] = capability_text(ci_minor, 292).encode()
            minors += [gi_minor, ci_minor]
    for name in root.listdir(caps):
        if not name.startswith("gpu"):
            continue
        for host, local in list(root.walk_files(f"{caps}/{name}/mig")):
            if host not in wanted:
                local.unlink()
                changed.append(host)
        _prune_empty_dirs(root.resolve(f"{caps}/{name}/mig"))
    for host, data in wanted.items():
        if root.write_atomic(host, data, mode=0o444):
            changed.append(host)
    if root.is_dir("/dev/nvidia-caps"):
        for minor in sorted(set(minors)):
            node = f"/dev/nvidia-caps/nvidia-cap{minor}"
            if not root.exists(node):
                root.write_atomic(node, placeholder_bytes(MAJOR_CAPS, minor), mode=0o444)
                changed.append(node)
            if root.is_dir(SIM_DEV_DIR) and write_runtime_device_node(root, node, MAJOR_CAPS, minor):
                changed.append(SIM_DEV_DIR + node)
    return changed


def _prune_empty_dirs(top: Path) -> None:
    """Remove the empty directories below ``top`` (a destroyed instance's gi<G>/ci<C>), deepest first."""
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def _device_entries(inventory: Inventory) -> list[tuple[str, int, int]]:
    entries = [(f"nvidia{g.minor_number}", MAJOR_FRONTEND, g.minor_number) for g in inventory.gpus]
    return [
        *entries,
        ("nvidiactl", MAJOR_FRONTEND, CTL_MINOR),
        ("nvidia-modeset", MAJOR_FRONTEND, MODESET_MINOR),
        ("nvidia-uvm", MAJOR_UVM, 0),
        ("nvidia-uvm-tools", MAJOR_UVM, 1),
        ("nvidia-caps/nvidia-cap1", MAJOR_CAPS, 1),
        ("nvidia-caps/nvidia-cap2", MAJOR_CAPS, 2),
    ]


def write_device_placeholders(root: Root, inventory: Inventory, dev_root: str = "/") -> None:
    """/dev/nvidia<minor>, nvidiactl, nvidia-modeset, nvidia-uvm(-tools), nvidia-caps/nvidia-cap{1,2}."""
    dev = dev_root.rstrip("/") + "/dev"
    for name, major, minor in _device_entries(inventory):
        _write(root, f"{dev}/{name}", placeholder_bytes(major, minor), 0o666)


def write_runtime_device_node(root: Root, path: str, major: int, minor: int) -> bool:
    """The runtime's node for the sandbox's device node ``path`` (``/dev/nvidia0``): ``SIM_DEV_DIR + path``, a
    character device 1:3 (/dev/null's numbers) when mknod is allowed (root), else a placeholder of the node's
    own numbers. An existing character device is kept. Returns True when it wrote one."""
    state = inspect(root, SIM_DEV_DIR, path)
    if state is not None and state.kind == "char":
        return False
    try:
        make_node(root, SIM_DEV_DIR, path, major=NULL_DEVICE[0], minor=NULL_DEVICE[1], mode=0o666, placeholder=False)
    except HostPathError:  # not root (or no CAP_MKNOD): the placeholder, as in the sandbox's /dev
        if state is not None:
            return False
        make_node(root, SIM_DEV_DIR, path, major=major, minor=minor, mode=0o666, placeholder=True)
    return True


def make_sim_device_node(root: Root, dev_root: str, path: str, *, major: int, minor: int, mode: int) -> None:
    """The simulator's ``DeviceNodeMaker``: the placeholder the driver subsystem asked for and, in a sandbox that
    has ``SIM_DEV_DIR`` (and the default dev root), the runtime's node for it."""
    make_node(root, dev_root, path, major=major, minor=minor, mode=mode, placeholder=True)
    if dev_root == "/" and root.is_dir(SIM_DEV_DIR):
        write_runtime_device_node(root, path, major, minor)


def write_runtime_device_nodes(root: Root, inventory: Inventory) -> None:
    """``SIM_DEV_DIR``'s node for every device node ``write_device_placeholders`` writes."""
    for name, major, minor in _device_entries(inventory):
        write_runtime_device_node(root, f"/dev/{name}", major, minor)


def write_helper_process(root: Root, pid: int, name: str) -> None:
    """A running helper daemon as /proc/<pid>/comm shows it: the kernel keeps 15 bytes of the name."""
    _write(root, f"/proc/{pid}/comm", f"{name[:15]}\n", 0o444)


def containerd_default_config() -> bytes:
    """containerd 1.6.20's real default config (as the Debian package ships it)."""
    return resources.files("nodeagent.backends.sim").joinpath("data/containerd-1.6.20-default.toml").read_bytes()


def write_pci_classes(root: Root, inventory: Inventory, pci_class: int = 0x030200) -> None:
    """/sys/bus/pci/devices/<address>/class of every GPU (the data-center models are 3D controllers)."""
    for gpu in inventory.gpus:
        domain, _, rest = gpu.pci_bus_id.lower().partition(":")
        address = f"{domain[-4:]}:{rest}"  # sysfs writes a 4-digit domain, NVML an 8-digit one
        _write(root, f"/sys/bus/pci/devices/{address}/class", f"0x{pci_class:06x}\n", 0o444)


def holds_only(path: Path, own: Iterable[str]) -> bool:
    """Whether the tree at ``path`` holds nothing but directories and what lies under the host paths ``own``
    (the agent's own state: its lock, the simulator's MIG state, which any command may write first)."""
    mine = [PurePosixPath("/", p.lstrip("/")) for p in own]
    for entry in path.rglob("*"):
        if entry.is_dir() and not entry.is_symlink():
            continue
        host = PurePosixPath("/", entry.relative_to(path).as_posix())
        if not any(host.is_relative_to(m) for m in mine):
            return False
    return True


def populate_sandbox(root: Root, inventory: Inventory, *, own: Iterable[str] = ()) -> bool:
    """Lay out a new or empty sandbox like a GPU node; leave a non-empty one as it is.

    A tree that holds only what lies under ``own`` (the agent's state directory, where ``mig apply``
    takes its lock and the simulator keeps its MIG state) counts as empty, so the sandbox is laid out
    fully whichever command runs first. Returns True when the tree was populated, False when ``root``
    already held something else (a test or a user laid out their own node first).
    """
    path = Path(root.path)
    if path.exists() and not holds_only(path, own):
        return False
    path.mkdir(parents=True, exist_ok=True)
    version = inventory.driver_version
    _write(root, "/etc/containerd/config.toml", containerd_default_config())
    _write(root, "/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    write_driver_files(root, "/", version, layout="debian")
    write_kernel_state(root, inventory)
    write_device_placeholders(root, inventory)
    write_runtime_device_nodes(root, inventory)
    # The container toolkit's binaries, which the runtime config and the CDI hooks point at.
    for tool in ("nvidia-container-runtime", "nvidia-ctk", "nvidia-cdi-hook"):
        _write(root, f"/usr/bin/{tool}", _elf_stub(tool), 0o755)
    write_pci_classes(root, inventory)
    write_helper_process(root, 1841, "nvidia-persistenced")
    _write(root, "/run/nvidia-persistenced/socket", b"", 0o755)  # stands in for its unix socket
    _symlink(root, "/var/run", "../run")  # as on Debian: /var/run -> /run
    for d in ("/run/nvidia/validations", "/run/cdi", "/etc/cdi"):
        root.resolve(d).mkdir(parents=True, exist_ok=True)
    return True


def sandbox_inventory(
    count: int = 2,
    *,
    driver_version: str = "580.159.04",
    nvml_version: str | None = None,
    mig_on: tuple[int, ...] = (),
) -> Inventory:
    """A small H100 inventory for tests and sandbox layouts (the simulated GPU backend makes richer ones).

    The GPUs' model facts (name, brand, PCI ids, memory, MIG profiles) come from the built-in
    ``h100-80gb-hbm3`` model (``nodeagent/model/gpu_models/``, a real capture); only the per-GPU
    identities (UUIDs, bus ids, serials) are made up here. GPUs whose index is in ``mig_on`` carry two
    MIG devices (3g.40gb at GI 1 and GI 2, CI 0 each).
    """
    from nodeagent.backends.gpu.sim.profiles import DEFAULT_PROFILE, load_profile
    from nodeagent.model.gpu import MigDevice

    model = load_profile(DEFAULT_PROFILE)
    half = model.mig_profile("3g.40gb")
    gpus = []
    for i in range(count):
        uuid = f"GPU-07ad00dd-2cf1-3178-492d-1bffa49e5{i:03x}"
        migs = tuple(
            MigDevice(
                uuid=f"MIG-5b0c6f2e-7a41-5d3c-9e1f-{i:04x}0000{m:04x}",
                gpu_index=i,
                mig_index=m,
                gpu_instance_id=m + 1,
                compute_instance_id=0,
                profile=half.name,
                placement_start=half.starts[m],
                placement_size=half.slices,
                memory_total_mib=half.memory_mib,
            )
            for m in range(2 if i in mig_on else 0)
        )
        gpus.append(
            GpuInfo(
                index=i,
                uuid=uuid,
                name=model.name,
                pci_bus_id=f"00000000:{0x18 + i * 0x10:02X}:00.0",
                pci_device_id=model.pci_device_id,
                pci_subsystem_id=model.pci_subsystem_id,
                minor_number=i,
                memory_total_mib=model.memory_total_mib,
                compute_capability=model.compute_capability,
                architecture=model.architecture,
                brand=model.brand,
                serial=f"{model.serial_prefix}3220{i:05d}"[:13],
                vbios_version=model.vbios_version,
                mig_capable=model.mig_capable,
                mig_enabled=bool(migs),
                mig_pending=bool(migs),
                mig_devices=migs,
                gpm_supported=model.gpm_supported,
            )
        )
    return Inventory(
        backend="sim",
        driver_version=driver_version,
        nvml_version=nvml_version or f"13.{driver_version}",
        cuda_driver_version=13000,
        gpus=tuple(gpus),
    )
