"""What the driver subsystem found: the payload of ``events.DRIVER_READY``.

Paths are host paths as the agent reads them through its Root (``/usr/local/nvidia/lib64/...``), so a
consumer resolves them with ``ctx.root``. ``root_in_runtime`` and ``dev_root`` say where the container
runtime sees the same files; CDI maps hostPaths with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DriverLibrary:
    path: str
    """The real file, e.g. /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04."""
    links: tuple[str, ...] = ()
    """Names of the symlinks next to it that point at it (soname and development links), e.g.
    ``("libcuda.so.1", "libcuda.so")``."""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def directory(self) -> str:
        return self.path.rsplit("/", 1)[0] or "/"


@dataclass(frozen=True)
class DriverFiles:
    """The user-space files of one driver root."""

    root: str
    """Host path of the driver root, e.g. ``/`` or ``/usr/local/nvidia``."""
    layout: str
    """``debian`` (usr/lib/x86_64-linux-gnu, usr/bin) or ``flat`` (lib64, bin)."""
    library_version: str
    """Version in the name of libnvidia-ml.so.<version> (what libnvidia-ml.so.1 points at)."""
    libraries: tuple[DriverLibrary, ...] = ()
    binaries: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    """Files found, one sentence each, for plan evidence and status details."""
    missing: tuple[str, ...] = ()
    """Required files that are absent: a partial driver root."""
    stray_versions: tuple[str, ...] = ()
    """Other versions of libnvidia-ml found next to the chosen one (an unfinished upgrade)."""

    def library(self, stem: str) -> DriverLibrary | None:
        for lib in self.libraries:
            if lib.name.startswith(f"{stem}.so."):
                return lib
        return None


@dataclass(frozen=True)
class HelperStatus:
    name: str
    needed: bool
    """False where the helper has nothing to do (fabric manager without NVSwitches)."""
    running: bool
    pids: tuple[int, ...] = ()

    def describe(self) -> str:
        if not self.needed:
            return f"{self.name}: not needed"
        if self.running:
            return f"{self.name}: running (pid {', '.join(map(str, self.pids))})"
        return f"{self.name}: not running"


@dataclass(frozen=True)
class DriverFacts:
    """A ready driver: everything CDI, metrics and the validation files need."""

    files: DriverFiles
    root_in_runtime: str
    """The driver root as the container runtime sees it (``/home/kubernetes/bin/nvidia``)."""
    root_in_agent: str
    """The driver root as the agent's own process sees it (``/host/home/kubernetes/bin/nvidia``)."""
    dev_root: str
    """Host path under which /dev/nvidia* live (``/`` normally)."""
    dev_root_in_agent: str
    kernel_version: str
    """The kernel module's version (/proc/driver/nvidia/version)."""
    open_modules: bool
    modules: tuple[str, ...]
    """Loaded NVIDIA kernel modules, kernel names (nvidia, nvidia_uvm, ...)."""
    device_nodes: tuple[str, ...]
    """Host paths of the NVIDIA device nodes present under the dev root."""
    helpers: tuple[HelperStatus, ...] = ()
    nvswitch: bool = False
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def root(self) -> str:
        return self.files.root

    @property
    def library_version(self) -> str:
        return self.files.library_version

    @property
    def is_host_driver(self) -> bool:
        """False for a driver container's root (/run/nvidia/driver), as the GPU Operator means it."""
        return self.files.root.rstrip("/") != "/run/nvidia/driver"
