"""The state every part of the NVML backend shares: the pynvml module, its error classes, per-GPU state.

``NvmlBackend`` is assembled from one mixin per concern (lifecycle, inventory, GPM, events, sampling),
each in its own module; they all derive from ``NvmlBase`` and meet only through the attributes here.
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from nodeagent.backends.gpu.nvml.library import WELL_KNOWN_DRIVER_ROOTS
from nodeagent.backends.gpu.nvml.readers import GpmState, NvmlDevice
from nodeagent.backends.gpu.sweep import GpuSweeper
from nodeagent.errors import BackendUnavailable
from nodeagent.model.gpu import Inventory, MigProfile

log = structlog.get_logger("nodeagent.backends.gpu.nvml")

INVALID_ID = 0xFFFFFFFF
"""NVML's value for "no GPU/compute instance" in event data and placements."""


class NvmlBase:
    """GpuBackend over NVML. ``nvml``: a pynvml-like module (default: pynvml, imported at open)."""

    def __init__(
        self,
        *,
        call_timeout_s: float = 5.0,
        driver_root: str | None = None,
        nvml: Any = None,
        load_library: Callable[[str], Any] = ctypes.CDLL,
        degraded_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        fallback_roots: Sequence[str] = WELL_KNOWN_DRIVER_ROOTS,
    ) -> None:
        self.driver_root = driver_root
        self.fallback_roots = tuple(fallback_roots)
        """Driver roots tried, in order, when the system loader cannot find libnvidia-ml."""
        self._nvml = nvml
        self._load_library = load_library
        self._clock = clock
        self._monotonic = monotonic
        self._sweeper = GpuSweeper(
            "nvml", call_timeout_s=call_timeout_s, backoff_initial_s=degraded_backoff_s, monotonic=monotonic
        )
        self.library_path: str | None = None
        """The libnvidia-ml that was loaded explicitly (None: the system loader's)."""
        self._gpus: list[NvmlDevice] = []
        self._system = ("", "", 0)
        self._mig_profiles: dict[str, tuple[MigProfile, ...]] = {}
        self.mig_details: dict[str, dict[str, dict[str, int]]] = {}
        """GPU name → GI profile name → multiprocessors and engine counts (for ``sim record``)."""
        self._event_set: Any = None
        self._missing: set[str] = set()
        self._opened = False

    # ---- module and error plumbing

    @functools.cached_property
    def nv(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        try:
            import pynvml
        except ImportError as err:
            raise BackendUnavailable(f"nvidia-ml-py (module pynvml) is not installed: {err}") from None
        return pynvml

    @functools.cached_property
    def nvml_error(self) -> type[Exception]:
        error: type[Exception] = self.nv.NVMLError
        return error

    @functools.cached_property
    def unsupported_codes(self) -> frozenset[int]:
        return frozenset({self.nv.NVML_ERROR_NOT_SUPPORTED, self.nv.NVML_ERROR_FUNCTION_NOT_FOUND})

    @functools.cached_property
    def absent_codes(self) -> frozenset[int]:
        nv = self.nv
        # Optional lookups (MIG instances, GI profiles): "none here" or "not for this user", not failures.
        return self.unsupported_codes | {
            nv.NVML_ERROR_NOT_FOUND,
            nv.NVML_ERROR_INVALID_ARGUMENT,
            nv.NVML_ERROR_NO_PERMISSION,
        }

    def missing_function(self, name: str) -> None:
        if name not in self._missing:
            self._missing.add(name)
            log.warning("nvml_function_missing", call=name, hint="the driver is older than nvidia-ml-py")

    def monotonic(self) -> float:
        return self._monotonic()

    def handle(self, index: int) -> Any:
        return self._gpus[index].handle

    def gpm_supported(self, index: int) -> bool:
        return self._gpus[index].gpm_supported

    # ---- implemented by the concern mixins (declared here so each mixin can call the others)

    async def inventory(self) -> Inventory:
        raise NotImplementedError

    def _create_event_set(self) -> None:
        raise NotImplementedError

    def _free_gpm(self, gpm: GpmState) -> None:
        raise NotImplementedError

    def _stop_watching(self, *, join_s: float = 0.0) -> None:
        raise NotImplementedError
