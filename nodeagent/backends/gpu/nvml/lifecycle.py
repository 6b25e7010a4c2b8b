"""NVML lifecycle: load libnvidia-ml (from the driver root when set), nvmlInit, count the GPUs, shut down."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nodeagent.backends.gpu.nvml.base import NvmlBase, log
from nodeagent.backends.gpu.nvml.events import WAIT_MS
from nodeagent.backends.gpu.nvml.library import (
    LIBRARY,
    LIBRARY_DIRS,
    find_nvml_library,
    unavailable_reason,
)
from nodeagent.backends.gpu.nvml.readers import NvmlDevice
from nodeagent.errors import BackendUnavailable, CallTimeout


class NvmlLifecycle(NvmlBase):
    async def open(self) -> None:
        try:
            count = await self._sweeper.call("nvmlInit", self.init_blocking)
        except CallTimeout as err:
            raise BackendUnavailable(f"NVML did not answer: {err}; the driver may be hung (check dmesg)") from None
        log.info(
            "nvml_opened", gpus=count, library=self.library_path or LIBRARY, driver_root=self.driver_root or "system"
        )
        inventory = await self.inventory()
        self._system = (inventory.driver_version, inventory.nvml_version, inventory.cuda_driver_version)
        try:
            await self._sweeper.call("nvmlEventSetCreate", self._create_event_set)
        except CallTimeout:
            log.warning("nvml_events_unavailable", reason="nvmlEventSetCreate hung; no XID events")
        self._opened = True

    async def close(self) -> None:
        if not self._gpus and not self._opened:
            self._sweeper.shutdown()
            return
        self._opened = False
        # the watcher's wait must end before the event set is freed (joined off the loop)
        await asyncio.to_thread(self._stop_watching, join_s=2 * WAIT_MS / 1000)
        try:
            await self._sweeper.call("nvmlShutdown", self._shutdown)
        except CallTimeout:
            log.warning("nvml_shutdown_hung")
        finally:
            self._gpus = []
            self._sweeper.shutdown()

    def shutdown_blocking(self) -> None:
        self._shutdown()
        self._gpus = []

    def init_blocking(self) -> int:
        """Load the library, nvmlInit, count the GPUs. Runs on the calling thread; raises BackendUnavailable."""
        nv = self.nv
        if self.driver_root:
            path = find_nvml_library(self.driver_root)
            if path is None:
                raise BackendUnavailable(
                    f"NVIDIA driver not found: no {LIBRARY} under the driver root {self.driver_root} "
                    f"(looked in {', '.join(LIBRARY_DIRS)}). Set driver.root to the folder that holds the driver, "
                    "or use --simulate to run without a GPU"
                )
            self._use_library(path)
        try:
            nv.nvmlInit()
        except self.nvml_error as err:
            if getattr(err, "value", None) != nv.NVML_ERROR_LIBRARY_NOT_FOUND or self.driver_root:
                raise BackendUnavailable(unavailable_reason(nv, err, library=self.library_path)) from None
            path = next(
                (p for p in map(find_nvml_library, self.fallback_roots) if p is not None),
                None,
            )
            if path is None:
                raise BackendUnavailable(unavailable_reason(nv, err)) from None
            self._use_library(path)
            try:
                nv.nvmlInit()
            except self.nvml_error as err2:
                raise BackendUnavailable(unavailable_reason(nv, err2, library=self.library_path)) from None
        try:
            count = int(nv.nvmlDeviceGetCount())
        except self.nvml_error as err:
            raise BackendUnavailable(f"NVML cannot count the GPUs: {err}") from None
        self._gpus = [NvmlDevice(i) for i in range(count)]
        return count

    def _use_library(self, path: Path) -> None:
        nv = self.nv
        if getattr(nv, "nvmlLib", None) is not None:
            return  # already loaded in this process (NVML keeps one library per process)
        try:
            nv.nvmlLib = self._load_library(str(path))
        except OSError as err:
            raise BackendUnavailable(f"cannot load {path}: {err}") from None
        self.library_path = str(path)

    def _shutdown(self) -> None:
        nv = self.nv
        for g in self._gpus:
            self._free_gpm(g.gpm)
            for m in g.mig.values():
                self._free_gpm(m.gpm)
        if self._event_set is not None:
            with contextlib.suppress(self.nvml_error):
                nv.nvmlEventSetFree(self._event_set)
            self._event_set = None
        try:
            nv.nvmlShutdown()
        except self.nvml_error as err:
            log.warning("nvml_shutdown_failed", error=str(err))
