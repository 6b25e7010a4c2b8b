"""The state every part of the simulator shares: the profile, the simulated GPUs, the worker, fault state.

``SimGpuBackend`` is assembled from one mixin per concern (sampling and inventory in ``backend``, MIG control
in ``mig``, fault injection in ``faults``, the persisted MIG state in ``persistence``); they all derive from
``SimBase`` and meet only through the attributes here.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nodeagent.backends.gpu.sim.device import SimGpu
from nodeagent.backends.gpu.sim.profiles import (
    DEFAULT_PROFILE,
    MAX_COUNT,
    GpuProfile,
    count_problem,
    load_profile,
    parse_mig_layout,
)
from nodeagent.backends.gpu.sweep import GpuLost, GpuSweeper, Hop
from nodeagent.errors import ConfigError
from nodeagent.model.gpu import (
    XidEvent,
)
from nodeagent.model.mig import find_placement


class SimBase:
    """Simulated GPUs. ``profile`` is a GpuProfile, a built-in name or a JSON path."""

    def __init__(
        self,
        profile: GpuProfile | str = DEFAULT_PROFILE,
        count: int | None = None,
        seed: int = 0,
        *,
        mig_layout: str = "",
        call_timeout_s: float = 5.0,
        degraded_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.count = self.profile.default_count if count is None else count
        if not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(count_problem(self.count), key="simulation.count")
        self.seed = seed
        self._clock = clock
        self._monotonic = monotonic
        self._sweeper = GpuSweeper(
            "sim-gpu", call_timeout_s=call_timeout_s, backoff_initial_s=degraded_backoff_s, monotonic=monotonic
        )
        self._release = threading.Event()
        self._xids: collections.deque[XidEvent] = collections.deque()
        self._xid_sink: Callable[[XidEvent], None] | None = None
        ids = random.Random(f"ids/{seed}/{self.profile.key}")
        buses = sorted(ids.sample(range(0x07, 0xF0), self.count))
        minors = ids.sample(range(self.count), self.count)
        now = clock()
        self._gpus = [
            SimGpu(self.profile, i, seed=seed, bus=buses[i], minor=minors[i], clock_now=now) for i in range(self.count)
        ]
        layout = parse_mig_layout(mig_layout, self.profile)
        if layout:
            starts = find_placement(
                [mp for mp, _ in layout],
                memory_slices=self.profile.mig_memory_slices,
                compute_slices=self.profile.mig_compute_slices,
            )
            assert starts is not None  # parse_mig_layout checked that it fits
            for g in self._gpus:
                g.mig_enabled = g.mig_pending = True
                for (mp, compute), start in zip(layout, starts, strict=True):
                    g.add_instance(mp, start, compute=compute)
        self._closed = False
        self._state_file: Path | None = None
        self._reset_blocker: tuple[str, str] | None = None

    def _gpu(self, index: int) -> SimGpu:
        if not 0 <= index < self.count:
            raise IndexError(f"no simulated GPU {index} (this node has {self.count})")
        return self._gpus[index]

    def _gate(self, g: SimGpu, hop: Hop) -> None:
        """What a real call does on a hung or lost GPU: block, or fail with GPU is lost."""
        wait = g.hung_until - self._monotonic()
        if wait > 0:
            self._release.wait(wait)
            hop.check()  # given up on by the loop: this late thread must not touch the state
        if g.lost:
            raise GpuLost("GPU is lost (NVML_ERROR_GPU_IS_LOST): it fell off the bus; reset or reboot")

    def _save(self) -> None:
        raise NotImplementedError
