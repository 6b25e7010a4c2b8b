"""Loaded kernel modules and the plan to load the missing ones.

A module counts as loaded when /proc/modules lists it ``Live`` or /sys/module/<name>/initstate says
``live``. ``/sys/module/<name>/refcnt`` is never used: it does not exist on kernels built without module
unloading (our H100 host), where /proc/modules shows ``-`` refcounts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nodeagent.backends.hostfs import Root
from nodeagent.errors import ConfigError

PROC_MODULES = "/proc/modules"

LOAD_ORDER: tuple[str, ...] = ("nvidia", "nvidia-uvm", "nvidia-modeset")
RDMA_MODULE = "nvidia-peermem"
WATCHED: tuple[str, ...] = ("nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_peermem", "nvidia_drm", "nouveau")

NOUVEAU_FIX = (
    "blacklist it: write 'blacklist nouveau' and 'options nouveau modeset=0' to "
    "/etc/modprobe.d/blacklist-nouveau.conf, rebuild the initramfs (update-initramfs -u, or dracut -f), reboot"
)


def kernel_name(module: str) -> str:
    """modprobe accepts nvidia-uvm; the kernel lists it as nvidia_uvm."""
    return module.replace("-", "_")


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    size: int
    refcount: int | None
    """None where the kernel prints ``-`` (no module unloading)."""
    used_by: tuple[str, ...]
    state: str
    """Live, Loading or Unloading."""


@dataclass(frozen=True)
class LoadedModules:
    entries: Mapping[str, ModuleEntry]
    initstate: Mapping[str, str]
    """/sys/module/<name>/initstate of the watched modules that have one."""

    def is_loaded(self, module: str) -> bool:
        name = kernel_name(module)
        entry = self.entries.get(name)
        return (entry is not None and entry.state == "Live") or self.initstate.get(name) == "live"

    def loaded(self, names: tuple[str, ...] = WATCHED) -> tuple[str, ...]:
        return tuple(n for n in names if self.is_loaded(n))

    def evidence(self) -> str:
        nvidia = [n for n in self.loaded() if n != "nouveau"]
        found = ", ".join(f"{n} ({self.initstate.get(n, 'no initstate')})" for n in nvidia) or "none"
        return f"NVIDIA modules loaded ({PROC_MODULES}, /sys/module/*/initstate): {found}"


@dataclass(frozen=True)
class ModuleLoad:
    module: str
    """The name modprobe takes, e.g. nvidia-uvm."""
    params: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return " ".join(("modprobe", self.module, *self.params))


def parse_proc_modules(text: str, source: str = PROC_MODULES) -> dict[str, ModuleEntry]:
    """Parse /proc/modules; a malformed line raises ConfigError naming the file and the line."""
    out: dict[str, ModuleEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 5 or not fields[1].isdigit() or not (fields[2].isdigit() or fields[2] == "-"):
            raise ConfigError(f"not a /proc/modules line: {line[:80]!r}", source=source, line=number)
        deps = tuple(d for d in fields[3].split(",") if d and d != "-")
        refcount = int(fields[2]) if fields[2].isdigit() else None
        out[fields[0]] = ModuleEntry(fields[0], int(fields[1]), refcount, deps, fields[4])
    return out


def read_loaded(root: Root) -> LoadedModules:
    """Blocking: read /proc/modules and the initstate of the watched modules."""
    text = root.read_text(PROC_MODULES)
    entries = parse_proc_modules(text) if text is not None else {}
    initstate: dict[str, str] = {}
    for name in WATCHED:
        value = root.read_text(f"/sys/module/{name}/initstate")
        if value is not None:
            initstate[name] = value.strip()
    return LoadedModules(entries, initstate)


def plan_loads(
    loaded: LoadedModules, *, rdma: bool, params: Mapping[str, list[str]] | None = None
) -> tuple[ModuleLoad, ...]:
    """The modprobe calls that bring the missing modules in, in load order (pure)."""
    params = params or {}
    wanted = (*LOAD_ORDER, RDMA_MODULE) if rdma else LOAD_ORDER
    out = []
    for module in wanted:
        if loaded.is_loaded(module):
            continue
        p = params.get(module) or params.get(kernel_name(module)) or []
        out.append(ModuleLoad(module, tuple(p)))
    return tuple(out)


def nouveau_problem(loaded: LoadedModules) -> str | None:
    """A loaded nouveau holds the GPUs so nvidia cannot bind them: a failure with its fix."""
    if not loaded.is_loaded("nouveau"):
        return None
    if loaded.is_loaded("nvidia"):
        return None
    return f"the nouveau kernel module is loaded and holds the GPUs, so nvidia cannot load; {NOUVEAU_FIX}"
