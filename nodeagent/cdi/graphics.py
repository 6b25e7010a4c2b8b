"""Graphics for CDI: the DRM nodes of each GPU and the driver's graphics files, as nvidia-ctk finds them.

With these in the spec, ``NVIDIA_DRIVER_CAPABILITIES=graphics`` (EGL, Vulkan, GBM, X) works in a
container. What nvidia-ctk's discoverers look for (facts from its internal/discover/graphics.go):

- per GPU: the nodes under ``/sys/bus/pci/devices/<bus id>/drm`` as ``/dev/dri/<name>`` (cardN,
  renderDN), and a create-symlinks hook recreating the ``/dev/dri/by-path/pci-<bus id>-*`` links that
  point at them;
- configuration files, looked up below ``/etc`` then ``/usr/share`` of the driver root: the glvnd EGL
  vendor file, the EGL external platform files, Optix and X configuration (mounted below /usr/share),
  the OpenCL ICD and the Vulkan ICD and layer files (mounted below /etc);
- the EGL external platform and GBM libraries next to the driver's libraries, with the
  ``gbm/nvidia-drm_gbm.so`` link to libnvidia-allocator;
- the X driver (``nvidia_drv.so``) and GLX server module in the Xorg module directories.

Discovery reads through the Root only; what is absent is simply left out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from nodeagent.backends.hostfs import Root
from nodeagent.model.driver import DriverFacts
from nodeagent.model.gpu import Inventory

SHARE_CONFIGS = (
    "glvnd/egl_vendor.d/10_nvidia.json",
    "egl/egl_external_platform.d/15_nvidia_gbm.json",
    "egl/egl_external_platform.d/10_nvidia_wayland.json",
    "egl/egl_external_platform.d/09_nvidia_wayland2.json",
    "egl/egl_external_platform.d/20_nvidia_xcb.json",
    "egl/egl_external_platform.d/20_nvidia_xlib.json",
    "nvidia/nvoptix.bin",
    "X11/xorg.conf.d/10-nvidia.conf",
    "X11/xorg.conf.d/nvidia-drm-outputclass.conf",
)
"""Mounted below /usr/share in the container."""
ETC_CONFIGS = ("OpenCL/vendors/nvidia.icd",)
VULKAN_CONFIGS = (
    "vulkan/icd.d/nvidia_icd.json",
    "vulkan/icd.d/nvidia_layers.json",
    "vulkan/implicit_layer.d/nvidia_layers.json",
)
"""Mounted below /etc; nvidia_icd.<arch>.json joins them."""
CONFIG_BASES = ("/etc", "/usr/share")
EXTERNAL_PLATFORM_LIBS = (
    "libnvidia-egl-gbm.so.*.*",
    "libnvidia-egl-wayland.so.*.*",
    "libnvidia-egl-wayland2.so.*.*",
    "libnvidia-egl-xcb.so.*.*",
    "libnvidia-egl-xlib.so.*.*",
)
XORG_MODULE_DIRS = ("xorg/modules/drivers", "xorg/modules/extensions", "xorg/modules/updates/drivers")
XORG_ROOTS = ("/usr/lib/xorg/modules", "/usr/lib64/xorg/modules")


@dataclass(frozen=True)
class DrmDevice:
    """The DRM nodes of one GPU and the by-path links to them."""

    nodes: tuple[str, ...]
    """``/dev/dri/card1``, ``/dev/dri/renderD128``."""
    by_path: tuple[str, ...] = ()
    """create-symlinks arguments ``<link target>::<link>``,
    e.g. ``../card1::/dev/dri/by-path/pci-0000:18:00.0-card``."""


@dataclass(frozen=True)
class GraphicsFiles:
    drm: Mapping[int, DrmDevice] = field(default_factory=dict)
    """GPU index → its DRM device (GPUs without DRM nodes are absent)."""
    configs: tuple[tuple[str, str], ...] = ()
    """(host path, container path)."""
    libraries: tuple[str, ...] = ()
    """Host paths of graphics libraries that go into the container's library directory."""
    xorg: tuple[str, ...] = ()
    """Host paths of the X driver and GLX module; the container path is the same below the driver root."""
    allocator: str = ""
    """Name of libnvidia-allocator.so.<version> when the driver has it (for the GBM backend link)."""

    @property
    def empty(self) -> bool:
        return not (self.drm or self.configs or self.libraries or self.xorg)


def sysfs_bus_id(nvml_bus_id: str) -> str:
    """NVML's ``00000000:18:00.0`` as sysfs names it: ``0000:18:00.0``."""
    domain, _, rest = nvml_bus_id.lower().partition(":")
    return f"{domain[-4:].rjust(4, '0')}:{rest}"


def _under(root: str, path: str) -> str:
    return str(PurePosixPath(root, path.lstrip("/")))


def drm_devices(root: Root, inventory: Inventory, dev_root: str) -> dict[int, DrmDevice]:
    out: dict[int, DrmDevice] = {}
    by_path_dir = _under(dev_root, "/dev/dri/by-path")
    links = root.listdir(by_path_dir)
    for gpu in inventory.gpus:
        bus = sysfs_bus_id(gpu.pci_bus_id)
        drm_dir = f"/sys/bus/pci/devices/{bus}/drm"
        names = [n for n in root.listdir(drm_dir) if n.startswith(("card", "renderD"))]
        if not names:
            continue
        by_path = []
        for link in links:
            if not link.startswith(f"pci-{bus}-"):
                continue
            target = str(root.resolve(f"{by_path_dir}/{link}", follow_last=False).readlink())
            if PurePosixPath(target).name in names:
                by_path.append(f"{target}::/dev/dri/by-path/{link}")
        out[gpu.index] = DrmDevice(tuple(f"/dev/dri/{n}" for n in names), tuple(by_path))
    return out


def _configs(root: Root, driver_root: str, arch: str) -> list[tuple[str, str]]:
    wanted = [(rel, "/usr/share") for rel in SHARE_CONFIGS]
    wanted += [(rel, "/etc") for rel in (*ETC_CONFIGS, *VULKAN_CONFIGS, f"vulkan/icd.d/nvidia_icd.{arch}.json")]
    out = []
    for rel, container_base in wanted:
        for base in CONFIG_BASES:
            host = _under(driver_root, f"{base}/{rel}")
            if root.is_file(host):
                out.append((host, f"{container_base}/{rel}"))
                break
    return out


def _match(root: Root, directories: Iterable[str], patterns: Iterable[str]) -> list[str]:
    out: list[str] = []
    for directory in directories:
        if not root.is_dir(directory):
            continue
        names = root.listdir(directory)
        for pattern in patterns:
            out += [f"{directory}/{n}" for n in sorted(fnmatch.filter(names, pattern))]
    return out


def discover(root: Root, facts: DriverFacts, inventory: Inventory, *, arch: str) -> GraphicsFiles:
    """Everything graphics needs that this node has (blocking: run it off the event loop)."""
    driver_root = facts.files.root
    version = facts.files.library_version
    lib_dirs = list(
        dict.fromkeys(lib.directory for lib in facts.files.libraries if not lib.directory.endswith("/vdpau"))
    )
    known = {lib.path for lib in facts.files.libraries}
    libraries = [p for p in _match(root, lib_dirs, EXTERNAL_PLATFORM_LIBS) if p not in known]
    libraries += [p for p in _match(root, lib_dirs, [f"libnvidia-vulkan-producer.so.{version}"]) if p not in known]
    allocator = f"libnvidia-allocator.so.{version}"
    has_allocator = any(PurePosixPath(p).name == allocator for p in known) or bool(_match(root, lib_dirs, [allocator]))
    xorg_dirs = [f"{d}/nvidia/xorg" for d in lib_dirs] + [f"{d}/{sub}" for d in lib_dirs for sub in XORG_MODULE_DIRS]
    xorg_dirs += [_under(driver_root, f"{r}/{leaf}") for r in XORG_ROOTS for leaf in ("drivers", "extensions")]
    xorg: list[str] = []
    for name in ("nvidia_drv.so", f"libglxserver_nvidia.so.{version}"):
        found = _match(root, xorg_dirs, [name])
        if found:
            xorg.append(found[0])  # the first in search order, as nvidia-ctk's locator
    return GraphicsFiles(
        drm=drm_devices(root, inventory, facts.dev_root),
        configs=tuple(_configs(root, driver_root, arch)),
        libraries=tuple(libraries),
        xorg=tuple(xorg),
        allocator=allocator if has_allocator else "",
    )
