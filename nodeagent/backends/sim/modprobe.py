"""A fake modprobe for simulation and tests: it edits the sandbox's /proc and /sys like a real load.

Loading a module adds its line to /proc/modules (newest first), creates /sys/module/<name>/{initstate,
version} (no refcnt, as on our H100 host), and registers its majors in /proc/devices; loading nvidia also
writes /proc/driver/nvidia/version. Dependencies come first, as modprobe resolves them from modules.dep
(nvidia-uvm pulls in nvidia). A loaded nouveau makes nvidia fail the way the real one does, and
``failures`` injects any other failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.backends.kmod import ModprobeError
from nodeagent.backends.sim.sandbox import (
    module_line,
    proc_devices_text,
    proc_version_text,
    write_capabilities,
    write_gpu_information,
)
from nodeagent.model.gpu import Inventory

KNOWN: Mapping[str, tuple[str, ...]] = {
    "nvidia": (),
    "nvidia_uvm": ("nvidia",),
    "nvidia_modeset": ("nvidia",),
    "nvidia_drm": ("nvidia", "nvidia_modeset"),
    "nvidia_peermem": ("nvidia",),
}


class SimModprobe:
    def __init__(
        self,
        root: Root,
        *,
        version: str,
        inventory: Inventory | None = None,
        failures: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.version = version
        self.inventory = inventory
        """When given, loading nvidia also creates /proc/driver/nvidia/{gpus,capabilities} for its GPUs."""
        self.failures = dict(failures or {})
        """module (either spelling) → the error text modprobe prints."""
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def load(self, module: str, params: Sequence[str] = ()) -> None:
        self.calls.append((module, tuple(params)))
        await run_blocking(self._load, module)

    def _loaded(self) -> list[str]:
        text = self.root.read_text("/proc/modules") or ""
        return [line.split()[0] for line in text.splitlines() if line.strip()]

    def _load(self, module: str) -> None:
        name = module.replace("-", "_")
        failure = self.failures.get(module) or self.failures.get(name)
        if failure:
            raise ModprobeError(f"modprobe {module} exited 1: {failure}")
        if name not in KNOWN:
            raise ModprobeError(f"modprobe {module} exited 1: modprobe: FATAL: Module {module} not found")
        loaded = self._loaded()
        if name == "nvidia" and "nouveau" in loaded:
            raise ModprobeError(
                f"modprobe {module} exited 1: modprobe: ERROR: could not insert 'nvidia': No such device"
            )
        for dep in KNOWN[name]:
            if dep not in loaded:
                self._load(dep)
                loaded = self._loaded()
        if name in loaded:
            return
        self._insert(name, loaded)

    def _insert(self, name: str, loaded: list[str]) -> None:
        lines = [module_line(name)] + [module_line(n) if n in KNOWN else self._line_of(n) for n in loaded]
        self.root.write_atomic(f"/sys/module/{name}/version", f"{self.version}\n".encode(), mode=0o444)
        self.root.write_atomic(f"/sys/module/{name}/initstate", b"live\n", mode=0o444)
        now = [*loaded, name]
        devices = proc_devices_text(nvidia="nvidia" in now, uvm="nvidia_uvm" in now)
        self.root.write_atomic("/proc/devices", devices.encode(), mode=0o444)
        if name == "nvidia":
            self.root.write_atomic("/proc/driver/nvidia/version", proc_version_text(self.version).encode(), mode=0o444)
            if self.inventory is not None:
                write_gpu_information(self.root, self.inventory, self.version)
                write_capabilities(self.root, self.inventory)
        # /proc/modules last: a reader that sees the module also sees its /sys and /proc entries.
        self.root.write_atomic("/proc/modules", "".join(line + "\n" for line in lines).encode(), mode=0o444)

    def _line_of(self, name: str) -> str:
        text = self.root.read_text("/proc/modules") or ""
        for line in text.splitlines():
            if line.split()[:1] == [name]:
                return line
        return module_line(name)
