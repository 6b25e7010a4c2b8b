"""SimGpuBackend: stateful fake GPUs from a profile, a count and a seed.

Identities (UUIDs, PCI bus ids, minor numbers, serials) are derived from the seed, so the same seed gives
the same node. Readings move over (injectable) time: utilization wanders between idle, inference and
training phases; power follows utilization; temperature follows power with a lag; energy integrates
power; framebuffer usage follows the workload, and used + free + reserved is the total, as NVML's
memory info v2 reports it. Readings the profile marks NotSupported are absent, as with NVML.

MIG behaves like the hardware: a mode change stays pending until ``reset_gpu``; GPU instances obey the
profile's placements (allowed starts, sizes, no overlap, compute slices, max counts, one ``+me``); a reset
drops them. Faults: ``inject_xid``, ``lose_gpu`` (NVML's "GPU is lost"), ``hang_calls`` (calls for a GPU
block the worker thread) and ``set_not_supported``.

All work happens on a watched worker thread with the per-call timeout, one hop per sweep, through the
same GpuSweeper as the NVML backend, so a hung simulated GPU is handled exactly like a hung real one.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from nodeagent.backends.gpu.protocols import MigInUse, MigResetUnavailable
from nodeagent.backends.gpu.sim.profiles import DEFAULT_PROFILE, MAX_COUNT, GpuProfile, load_profile, parse_mig_layout
from nodeagent.backends.gpu.sweep import GpuLost, GpuSweeper, Hop, to_sample
from nodeagent.backends.gpu.sweep import wanted_gpus as _wanted
from nodeagent.backends.hostfs import atomic_write
from nodeagent.errors import ConfigError, MigOperationError
from nodeagent.model.gpu import (
    GPM_READINGS,
    MIG_READINGS,
    NVLINK_ERROR_READINGS,
    GpuHealthState,
    GpuInfo,
    Inventory,
    MigDevice,
    MigKey,
    MigProfile,
    Reading,
    Sample,
    SampleRequest,
    XidEvent,
)
from nodeagent.model.mig import GpuProcess, count_problem, find_placement, gpu_instance_id, placement_problem

log = structlog.get_logger(__name__)

XID_FALLEN_OFF_BUS = 79
STATE_FORMAT = "nodeagent.sim-mig-state/v1"
_UTIL_ONLY_WITHOUT_MIG = frozenset({Reading.GPU_UTIL_PCT, Reading.MEM_COPY_UTIL_PCT})
_MIG_GPM = MIG_READINGS & GPM_READINGS


def _hex_id(*parts: object) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()


def _uuid(prefix: str, *parts: object) -> str:
    h = _hex_id(*parts)
    return f"{prefix}-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# ------------------------------------------------------------------------------------------- workload

_PHASES = (
    # name, probability, utilization range, FB fraction range, tensor share
    ("idle", 0.3, (0.0, 0.0), (0.0, 0.0), 0.0),
    ("inference", 0.35, (20.0, 60.0), (0.2, 0.5), 0.3),
    ("training", 0.35, (85.0, 99.0), (0.6, 0.92), 0.55),
)


class _Workload:
    """A utilization walk between phases, with the framebuffer use that goes with it."""

    __slots__ = ("fb_mib", "fb_target", "phase_left", "pinned", "rng", "tensor", "usable_mib", "util", "util_target")

    def __init__(self, rng: random.Random, usable_mib: float) -> None:
        self.rng = rng
        self.usable_mib = usable_mib
        self.util = self.util_target = 0.0
        self.fb_mib = self.fb_target = 0.0
        self.tensor = 0.0
        self.phase_left = 0.0
        self.pinned = False
        self._next_phase()
        self.util = self.util_target
        self.fb_mib = self.fb_target

    def _next_phase(self) -> None:
        r = self.rng.random()
        phase = _PHASES[-1]
        for candidate in _PHASES:
            if r < candidate[1]:
                phase = candidate
                break
            r -= candidate[1]
        _, _, (lo, hi), (flo, fhi), tensor = phase
        self.util_target = self.rng.uniform(lo, hi)
        self.fb_target = self.usable_mib * self.rng.uniform(flo, fhi)
        self.tensor = tensor
        self.phase_left = self.rng.uniform(60.0, 600.0)

    def pin(self, util_pct: float | None) -> None:
        """Hold the utilization target (and a matching FB use) until unpinned with None."""
        if util_pct is None:
            self.pinned = False
            self.phase_left = 0.0
            return
        self.pinned = True
        self.util_target = min(100.0, max(0.0, util_pct))
        self.fb_target = self.usable_mib * 0.85 * self.util_target / 100.0
        self.tensor = 0.5 if self.util_target > 0 else 0.0

    def step(self, dt: float, a_util: float, a_fb: float, noise_k: float) -> None:
        """Advance by ``dt`` seconds; the smoothing factors are computed once per GPU step."""
        self.phase_left -= dt
        if self.phase_left <= 0 and not self.pinned:
            self._next_phase()
        target = self.util_target
        noise = self.rng.gauss(0.0, 3.0) * noise_k if target > 0 else 0.0
        util = self.util + (target - self.util) * a_util + noise
        util = 100.0 if util > 100.0 else (0.0 if util < 0.0 else util)
        if target == 0 and util < 0.5:
            util = 0.0
        self.util = util
        self.fb_mib += (self.fb_target - self.fb_mib) * a_fb


@dataclass
class _Instance:
    gi: int
    ci: int
    profile: MigProfile
    start: int
    uuid: str
    work: _Workload
    gpm_primed: bool = False


class _SimGpu:
    """One simulated GPU: identity, MIG state, fault state and the physical quantities."""

    def __init__(self, profile: GpuProfile, index: int, *, seed: int, bus: int, minor: int, clock_now: float) -> None:
        p = profile
        self.profile = p
        self.index = index
        self.seed = seed
        self.uuid = _uuid("GPU", "gpu", seed, p.key, index)
        self.bus_id = f"00000000:{bus:02X}:00.0"
        self.minor = minor
        digits = str(int(_hex_id("serial", seed, p.key, index), 16))
        self.serial = (p.serial_prefix + digits)[:13]
        self.rng = random.Random(f"{seed}/{p.key}/{index}")
        self.lost = False
        self.hung_until = 0.0
        self.extra_not_supported: frozenset[Reading] = frozenset()
        self.mig_enabled = False
        self.mig_pending = False
        self.instances: dict[int, _Instance] = {}
        self.created = 0
        """GPU instances created so far: each creation gets a new MIG UUID, as on the hardware."""
        self.holders: tuple[GpuProcess, ...] = ()
        usable = p.memory_total_mib - p.memory_reserved_mib
        self.work = _Workload(self.rng, usable)
        self.t = clock_now
        self.power = p.power_idle_w
        self.temp = p.temp_idle_c
        self.energy_mj = self.rng.uniform(3600.0, 30 * 86400.0) * p.power_idle_w * 1000.0
        self.replays = 0
        self.nvlink_kib = 0.0
        """Cumulative NVLink data, rx + tx over all links (NVML's NVLINK_THROUGHPUT_DATA_RX/TX, KiB)."""
        self._nvlink_read: tuple[float, float] | None = None
        self.violation = {
            Reading.POWER_VIOLATION_NS: 0.0,
            Reading.THERMAL_VIOLATION_NS: 0.0,
            Reading.SYNC_BOOST_VIOLATION_NS: 0.0,
            Reading.BOARD_LIMIT_VIOLATION_NS: 0.0,
            Reading.LOW_UTIL_VIOLATION_NS: 0.0,
            Reading.RELIABILITY_VIOLATION_NS: 0.0,
        }
        self.gpm_primed = False
        self.util = self.work.util
        self._settle(clock_now)

    def _settle(self, now: float) -> None:
        """Start from the steady state of the initial workload (as if the node had been up a while)."""
        p = self.profile
        self.power = self._power_target()
        self.temp = self._temp_target()
        self.t = now
        if self.util == 0:
            self.power, self.temp = p.power_idle_w, p.temp_idle_c

    def not_supported(self) -> frozenset[Reading]:
        ns = self.profile.not_supported | self.extra_not_supported
        return ns | _UTIL_ONLY_WITHOUT_MIG if self.mig_enabled else ns

    # ---- physics

    def _util_now(self) -> float:
        if not self.mig_enabled:
            return self.work.util
        total = self.profile.mig_compute_slices or 7
        return sum(i.work.util * i.profile.compute_slices for i in self.instances.values()) / total

    def _fb_used_now(self) -> float:
        if not self.mig_enabled:
            return self.work.fb_mib
        return sum(i.work.fb_mib for i in self.instances.values())

    def _power_target(self) -> float:
        p = self.profile
        u = self.util / 100.0
        return p.power_idle_w + (p.power_limit_w * 0.93 - p.power_idle_w) * math.pow(u, 1.2)

    def _temp_target(self) -> float:
        p = self.profile
        span = max(1.0, p.power_limit_w - p.power_idle_w)
        return p.temp_idle_c + (self.power - p.power_idle_w) / span * (p.temp_slowdown_c - 6.0 - p.temp_idle_c)

    def step(self, now: float) -> None:
        dt = min(max(now - self.t, 0.0), 3600.0)
        self.t = max(self.t, now)
        if dt == 0:
            return
        p = self.profile
        a_util, a_fb = 1.0 - math.exp(-dt / 3.0), 1.0 - math.exp(-dt / 5.0)
        noise_k = min(1.0, math.sqrt(dt / 10.0))
        if self.mig_enabled:
            for inst in self.instances.values():
                inst.work.step(dt, a_util, a_fb, noise_k)
        else:
            self.work.step(dt, a_util, a_fb, noise_k)
        self.util = self._util_now()
        prev = self.power
        target = self._power_target()
        self.power = target + (self.power - target) * math.exp(-dt / 2.0)
        if target > p.power_idle_w * 1.05:
            self.power *= 1.0 + self.rng.gauss(0.0, 0.01)
        self.power = min(p.power_limit_w, max(p.power_idle_w * 0.97, self.power))
        self.energy_mj += (prev + self.power) / 2.0 * dt * 1000.0
        self.temp += (self._temp_target() - self.temp) * (1.0 - math.exp(-dt / 40.0))
        u = self.util
        if self.power >= p.power_limit_w * 0.97:
            self.violation[Reading.POWER_VIOLATION_NS] += dt * 1e9
        if self.temp >= p.temp_slowdown_c:
            self.violation[Reading.THERMAL_VIOLATION_NS] += dt * 1e9
        if u < 5.0:
            self.violation[Reading.LOW_UTIL_VIOLATION_NS] += dt * 1e9
        if self.rng.random() < 0.0002 * dt:
            self.replays += 1
        # A busy GPU of an NVLink board moves a quarter of its NVLink bandwidth (collectives between steps).
        self.nvlink_kib += u / 100.0 * 0.25 * p.nvlink_bandwidth_gbs * 1e9 / 1024 * dt

    def nvlink_rate(self) -> float:
        """DCGM's DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL over the cumulative counters: KiB since the previous
        reading per second, / 1000 (DcgmCacheManager's arithmetic); 0 on the first reading."""
        last, self._nvlink_read = self._nvlink_read, (self.t, self.nvlink_kib)
        if last is None or self.t <= last[0]:
            return 0.0
        return float(int((self.nvlink_kib - last[1]) / (self.t - last[0]) / 1000.0))

    def values(self) -> dict[Reading, float]:
        """Every reading this model can have, at the current state."""
        p = self.profile
        u = self.util
        busy = u >= 1.0
        fb_used = float(int(self._fb_used_now()))
        fb_total = float(p.memory_total_mib)
        fb_reserved = float(p.memory_reserved_mib)
        pcie_scale = p.pcie_generation * p.pcie_width * 250.0
        tx_kbs = 1700.0 + u * pcie_scale * (0.4 + 0.1 * math.sin(self.t / 7.0))
        rx_kbs = 520.0 + u * pcie_scale * (0.6 + 0.1 * math.cos(self.t / 5.0))
        mem_util = min(100.0, u * 0.55)
        gr = u / 100.0 * 0.97
        sm = gr * 0.86
        tensor = self.work.tensor if not self.mig_enabled else 0.4
        v = {
            Reading.SM_CLOCK_MHZ: float(p.sm_clock_max_mhz if busy else p.sm_clock_idle_mhz),
            Reading.MEM_CLOCK_MHZ: float(p.mem_clock_max_mhz if busy else p.mem_clock_idle_mhz),
            Reading.GPU_TEMP_C: float(round(self.temp)),
            Reading.MEMORY_TEMP_C: float(round(p.memory_temp_idle_c + (self.temp - p.temp_idle_c) * 0.9)),
            Reading.POWER_W: round(self.power, 3),
            Reading.POWER_LIMIT_W: p.power_limit_w,
            Reading.TOTAL_ENERGY_MJ: float(int(self.energy_mj)),
            Reading.PCIE_REPLAY_COUNT: float(self.replays),
            Reading.GPU_UTIL_PCT: float(round(u)),
            Reading.MEM_COPY_UTIL_PCT: float(round(mem_util)),
            Reading.ENC_UTIL_PCT: 0.0,
            Reading.DEC_UTIL_PCT: 0.0,
            Reading.FB_FREE_MIB: fb_total - fb_reserved - fb_used,
            Reading.FB_USED_MIB: fb_used,
            Reading.FB_RESERVED_MIB: fb_reserved,
            Reading.FB_TOTAL_MIB: fb_total,
            Reading.NVLINK_BANDWIDTH_TOTAL: 0.0,  # set by _read, which knows whether it was asked for
            Reading.VGPU_LICENSE_STATUS: 1.0,
            Reading.UNCORRECTABLE_REMAPPED_ROWS: 0.0,
            Reading.CORRECTABLE_REMAPPED_ROWS: 0.0,
            Reading.ROW_REMAP_FAILURE: 0.0,
            Reading.ECC_SBE_VOL_TOTAL: 0.0,
            Reading.ECC_DBE_VOL_TOTAL: 0.0,
            Reading.ECC_SBE_AGG_TOTAL: 0.0,
            Reading.ECC_DBE_AGG_TOTAL: 0.0,
            Reading.RETIRED_SBE: 0.0,
            Reading.RETIRED_DBE: 0.0,
            Reading.RETIRED_PENDING: 0.0,
            Reading.FAN_SPEED_PCT: float(round(30.0 + u * 0.5)),
            Reading.PSTATE: float(p.pstate_busy if busy else p.pstate_idle),
            Reading.PCIE_TX_THROUGHPUT_KBS: float(int(tx_kbs)),
            Reading.PCIE_RX_THROUGHPUT_KBS: float(int(rx_kbs)),
            Reading.GR_ENGINE_ACTIVE: gr,
            Reading.SM_ACTIVE: sm,
            Reading.SM_OCCUPANCY: sm * 0.45,
            Reading.PIPE_TENSOR_ACTIVE: sm * tensor,
            Reading.PIPE_FP64_ACTIVE: sm * 0.01,
            Reading.PIPE_FP32_ACTIVE: sm * 0.25,
            Reading.PIPE_FP16_ACTIVE: sm * 0.1,
            Reading.DRAM_ACTIVE: mem_util / 100.0 * 0.9,
            Reading.PCIE_TX_BYTES: tx_kbs * 1000.0,
            Reading.PCIE_RX_BYTES: rx_kbs * 1000.0,
            # NVML clocks event bits: 0x1 GPU idle, 0x4 software power cap.
            Reading.CLOCK_EVENT_REASONS: 0.0 if busy else 1.0 + (4.0 if self.power >= p.power_limit_w else 0.0),
        }
        v.update(dict.fromkeys(NVLINK_ERROR_READINGS, 0.0))  # healthy links; the profile says if it has any
        v.update(self.violation)
        return v

    def instance_values(self, inst: _Instance) -> dict[Reading, float]:
        u = inst.work.util
        total = float(inst.profile.memory_mib)
        # NVML's memory info v2 on a MIG device: the instance's share of what the driver reserves.
        p = self.profile
        reserved = float(int(p.memory_reserved_mib * inst.profile.slices / max(1, p.mig_memory_slices)))
        used = float(int(min(inst.work.fb_mib, total - reserved)))
        gr = u / 100.0 * 0.97
        sm = gr * 0.86
        return {
            Reading.FB_TOTAL_MIB: total,
            Reading.FB_USED_MIB: used,
            Reading.FB_FREE_MIB: total - reserved - used,
            Reading.FB_RESERVED_MIB: reserved,
            Reading.GR_ENGINE_ACTIVE: gr,
            Reading.SM_ACTIVE: sm,
            Reading.SM_OCCUPANCY: sm * 0.45,
            Reading.PIPE_TENSOR_ACTIVE: sm * inst.work.tensor,
            Reading.PIPE_FP64_ACTIVE: sm * 0.01,
            Reading.PIPE_FP32_ACTIVE: sm * 0.25,
            Reading.PIPE_FP16_ACTIVE: sm * 0.1,
            Reading.DRAM_ACTIVE: u / 100.0 * 0.5,
        }

    # ---- MIG

    def mig_devices(self) -> tuple[MigDevice, ...]:
        if not self.mig_enabled:
            return ()
        return tuple(
            MigDevice(
                uuid=inst.uuid,
                gpu_index=self.index,
                mig_index=n,
                gpu_instance_id=inst.gi,
                compute_instance_id=inst.ci,
                profile=inst.profile.name,
                placement_start=inst.start,
                placement_size=inst.profile.slices,
                memory_total_mib=inst.profile.memory_mib,
            )
            for n, inst in enumerate(sorted(self.instances.values(), key=lambda i: (i.gi, i.ci)))
        )

    def add_instance(self, mp: MigProfile, start: int, *, uuid: str = "") -> _Instance:
        p = self.profile
        gi = gpu_instance_id(start, mp.slices, p.mig_memory_slices)
        rng = random.Random(f"{self.seed}/{p.key}/{self.index}/gi{gi}")
        if not uuid:
            uuid = _uuid("MIG", "mig", self.uuid, gi, 0, self.created)
            self.created += 1
        inst = _Instance(
            gi=gi,
            ci=0,
            profile=mp,
            start=start,
            uuid=uuid,
            work=_Workload(rng, mp.memory_mib * 0.97),
        )
        self.instances[gi] = inst
        return inst

    def placed(self) -> list[tuple[MigProfile, int]]:
        return [(i.profile, i.start) for i in self.instances.values()]


# ---------------------------------------------------------------------------------------------- backend


class SimGpuBackend:
    """GpuBackend over simulated GPUs. ``profile`` is a GpuProfile, a built-in name or a JSON path."""

    kind = "sim"

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
            raise ConfigError(f"must be between 1 and {MAX_COUNT}, got {self.count}", key="simulation.count")
        self.seed = seed
        self._clock = clock
        self._monotonic = monotonic
        self._sweeper = GpuSweeper(
            "sim-gpu", call_timeout_s=call_timeout_s, backoff_initial_s=degraded_backoff_s, monotonic=monotonic
        )
        self._release = threading.Event()
        self._xids: collections.deque[XidEvent] = collections.deque()
        ids = random.Random(f"ids/{seed}/{self.profile.key}")
        buses = sorted(ids.sample(range(0x07, 0xF0), self.count))
        minors = ids.sample(range(self.count), self.count)
        now = clock()
        self._gpus = [
            _SimGpu(self.profile, i, seed=seed, bus=buses[i], minor=minors[i], clock_now=now) for i in range(self.count)
        ]
        layout = parse_mig_layout(mig_layout, self.profile)
        if layout:
            starts = find_placement(
                layout, memory_slices=self.profile.mig_memory_slices, compute_slices=self.profile.mig_compute_slices
            )
            assert starts is not None  # parse_mig_layout checked that it fits
            for g in self._gpus:
                g.mig_enabled = g.mig_pending = True
                for mp, start in zip(layout, starts, strict=True):
                    g.add_instance(mp, start)
        self._closed = False
        self._state_file: Path | None = None
        self._reset_blocker: tuple[str, str] | None = None

    # ---- GpuBackend

    async def open(self) -> None:
        self._closed = False
        log.info("sim_gpus_opened", profile=self.profile.key, name=self.profile.name, count=self.count, seed=self.seed)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release.set()  # wake any simulated hang so its thread ends
        self._sweeper.shutdown()

    async def inventory(self) -> Inventory:
        result = await self._sweeper.sweep(range(self.count), self._info_call, name="inventory")
        gpus = []
        for g in self._gpus:
            info = result.results.get(g.index) or self._info(g)
            state = self._sweeper.health.state(g.index)
            if state != GpuHealthState.OK:
                info = replace(info, health=state, health_reason=self._sweeper.health.reason(g.index))
            gpus.append(info)
        p = self.profile
        return Inventory(
            backend="sim",
            driver_version=p.driver_version,
            nvml_version=p.nvml_version,
            cuda_driver_version=p.cuda_driver_version,
            gpus=tuple(gpus),
            mig_profiles={p.name: p.mig_profiles} if p.mig_capable else {},
        )

    async def sample(self, request: SampleRequest) -> Sample:
        taken_at = self._clock()
        readings = request.readings
        include_mig = request.include_mig

        def per_gpu(hop: Hop, index: int) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
            return hop.call("sim_read_gpu", self._read, hop, self._gpus[index], readings, include_mig, taken_at)

        result = await self._sweeper.sweep(_wanted(self.count, request), per_gpu, tail=self._drain_xids, name="sample")
        indexes = [g.index for g in self._gpus]
        return to_sample(result, taken_at=taken_at, health=self._sweeper.health, gpus=indexes, request=request)

    # ---- worker-thread side

    def _gate(self, g: _SimGpu, hop: Hop) -> None:
        """What a real call does on a hung or lost GPU: block, or fail with GPU is lost."""
        wait = g.hung_until - self._monotonic()
        if wait > 0:
            self._release.wait(wait)
            hop.check()  # given up on by the loop: this late thread must not touch the state
        if g.lost:
            raise GpuLost("GPU is lost (NVML_ERROR_GPU_IS_LOST): it fell off the bus; reset or reboot")

    def _info_call(self, hop: Hop, index: int) -> GpuInfo:
        g = self._gpus[index]
        return hop.call("sim_device_info", self._gated_info, hop, g)

    def _gated_info(self, hop: Hop, g: _SimGpu) -> GpuInfo:
        self._gate(g, hop)
        return self._info(g)

    def _info(self, g: _SimGpu) -> GpuInfo:
        p = self.profile
        return GpuInfo(
            index=g.index,
            uuid=g.uuid,
            name=p.name,
            pci_bus_id=g.bus_id,
            pci_device_id=p.pci_device_id,
            pci_subsystem_id=p.pci_subsystem_id,
            minor_number=g.minor,
            memory_total_mib=p.memory_total_mib,
            compute_capability=p.compute_capability,
            architecture=p.architecture,
            brand=p.brand,
            serial=g.serial,
            vbios_version=p.vbios_version,
            mig_capable=p.mig_capable,
            mig_enabled=g.mig_enabled,
            mig_pending=g.mig_pending,
            mig_devices=g.mig_devices(),
            gpm_supported=p.gpm_supported,
        )

    def _read(
        self, hop: Hop, g: _SimGpu, readings: frozenset[Reading], include_mig: bool, now: float
    ) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
        self._gate(g, hop)
        g.step(now)
        ns = g.not_supported()
        want = readings - ns
        if not g.profile.gpm_supported:
            want = want - GPM_READINGS  # as NVML without GPM (before Hopper): no profiling readings at all
        if want & GPM_READINGS and not g.gpm_primed:
            g.gpm_primed = True  # GPM needs two samples: the first sweep has none, as with NVML
            want = want - GPM_READINGS
        values = g.values()
        if Reading.NVLINK_BANDWIDTH_TOTAL in want:
            values[Reading.NVLINK_BANDWIDTH_TOTAL] = g.nvlink_rate()
        out = {r: values[r] for r in want}
        mig: dict[MigKey, dict[Reading, float]] = {}
        if include_mig and g.mig_enabled and g.instances:
            mig_want = readings & MIG_READINGS - g.profile.not_supported - g.extra_not_supported
            if not g.profile.gpm_supported:
                mig_want = mig_want - GPM_READINGS
            for inst in g.instances.values():
                w = mig_want
                if w & _MIG_GPM and not inst.gpm_primed:
                    inst.gpm_primed = True
                    w = w - _MIG_GPM
                iv = g.instance_values(inst)
                mig[(g.index, inst.gi)] = iv if w == MIG_READINGS else {r: iv[r] for r in w}
        return out, mig

    def _drain_xids(self, hop: Hop) -> list[XidEvent]:
        def drain() -> list[XidEvent]:
            events = []
            while self._xids:
                events.append(self._xids.popleft())
            return events

        return hop.call("sim_event_wait", drain)

    # ---- fault injection (callable from the loop at any time)

    def _gpu(self, index: int) -> _SimGpu:
        if not 0 <= index < self.count:
            raise IndexError(f"no simulated GPU {index} (this node has {self.count})")
        return self._gpus[index]

    def inject_xid(
        self, gpu_index: int, xid: int, *, gpu_instance_id: int | None = None, compute_instance_id: int | None = None
    ) -> None:
        """An XID error on a GPU (or one of its MIG instances); it shows up in the next Sample.xids."""
        g = self._gpu(gpu_index)
        self._xids.append(
            XidEvent(
                gpu_index=gpu_index,
                gpu_uuid=g.uuid,
                xid=xid,
                timestamp=self._clock(),
                gpu_instance_id=gpu_instance_id,
                compute_instance_id=compute_instance_id,
            )
        )

    def lose_gpu(self, gpu_index: int) -> None:
        """The GPU falls off the bus: XID 79, then every call fails with GPU is lost (health LOST)."""
        g = self._gpu(gpu_index)
        if not g.lost:
            g.lost = True
            self.inject_xid(gpu_index, XID_FALLEN_OFF_BUS)

    def hang_calls(self, gpu_index: int, seconds: float) -> None:
        """Calls for this GPU block the worker thread until ``seconds`` from now (0 ends the hang)."""
        self._gpu(gpu_index).hung_until = self._monotonic() + seconds if seconds > 0 else 0.0

    def set_workload(self, gpu_index: int, utilization_pct: float | None) -> None:
        """Pin a GPU's (or, in MIG mode, each of its instances') utilization target; None resumes the
        random idle/inference/training phases. Power, temperature, clocks and FB use follow."""
        g = self._gpu(gpu_index)
        g.work.pin(utilization_pct)
        for inst in g.instances.values():
            inst.work.pin(utilization_pct)

    def set_not_supported(self, readings: Iterable[Reading], *, gpu_index: int | None = None) -> None:
        """Make these readings NotSupported (absent) on one GPU or on all."""
        extra = frozenset(Reading(r) for r in readings)
        for g in self._gpus if gpu_index is None else [self._gpu(gpu_index)]:
            g.extra_not_supported = g.extra_not_supported | extra

    # ---- MIG (through the worker, like the NVML calls they model)

    async def set_mig_mode(self, gpu_index: int, enabled: bool) -> bool:
        """Set the pending MIG mode; returns True when a GPU reset is needed to apply it."""
        return await self._sweeper.call_in_hop("nvmlDeviceSetMigMode", self._set_mig_mode, gpu_index, enabled)

    async def reset_gpu(self, gpu_index: int) -> None:
        """A GPU reset: the pending MIG mode becomes current, GPU instances are gone, a lost or hung GPU
        comes back."""
        await self._sweeper.call("nvmlDeviceReset", self._reset, gpu_index)

    async def create_gpu_instance(self, gpu_index: int, profile: str, *, start: int | None = None) -> MigDevice:
        """Create a GPU instance (and one compute instance on all of it) at ``start`` or at the lowest free
        placement, as NVML's automatic placement does."""
        return await self._sweeper.call_in_hop("nvmlDeviceCreateGpuInstance", self._create, gpu_index, profile, start)

    async def destroy_gpu_instance(self, gpu_index: int, gpu_instance_id: int) -> None:
        await self._sweeper.call_in_hop("nvmlGpuInstanceDestroy", self._destroy, gpu_index, gpu_instance_id)

    def _mig_gpu(self, hop: Hop, gpu_index: int) -> _SimGpu:
        g = self._gpu(gpu_index)
        try:
            self._gate(g, hop)
        except GpuLost as err:
            raise MigOperationError(f"GPU {gpu_index}: {err.reason}") from None
        if not self.profile.mig_capable:
            raise MigOperationError(f"GPU {gpu_index} ({self.profile.name}) is not MIG-capable")
        return g

    def _set_mig_mode(self, hop: Hop, gpu_index: int, enabled: bool) -> bool:
        g = self._mig_gpu(hop, gpu_index)
        if not enabled and g.instances:
            raise MigOperationError(f"GPU {gpu_index}: destroy its {len(g.instances)} GPU instance(s) first (in use)")
        g.mig_pending = enabled
        self._save()
        log.info("sim_mig_mode_set", gpu=gpu_index, pending=enabled, current=g.mig_enabled)
        return g.mig_pending != g.mig_enabled

    def _reset(self, gpu_index: int) -> None:
        g = self._gpu(gpu_index)
        if self._reset_blocker is not None:
            kind, reason = self._reset_blocker
            why = f": {reason}" if reason else ""
            if kind == "reboot":
                raise MigResetUnavailable(f"GPU {gpu_index}: cannot be reset here (NVML_ERROR_RESET_REQUIRED){why}")
            raise MigInUse(f"GPU {gpu_index}: reset refused: in use by another client{why}")
        g.mig_enabled = g.mig_pending
        g.instances.clear()
        g.lost = False
        g.hung_until = 0.0
        g.gpm_primed = False
        self._sweeper.health.clear(gpu_index)
        self._save()
        log.info("sim_gpu_reset", gpu=gpu_index, mig_enabled=g.mig_enabled)

    def _create(self, hop: Hop, gpu_index: int, profile: str, start: int | None) -> MigDevice:
        g = self._mig_gpu(hop, gpu_index)
        if not g.mig_enabled:
            hint = " (it is pending: reset the GPU to apply it)" if g.mig_pending else ""
            raise MigOperationError(f"GPU {gpu_index}: MIG mode is not enabled{hint}")
        try:
            mp = self.profile.mig_profile(profile)
        except ConfigError as err:
            raise MigOperationError(err.bare_message) from None
        p = self.profile
        if start is None:
            problem = count_problem(mp, g.placed())
            if problem:
                raise MigOperationError(f"GPU {gpu_index}: {problem}")
            found = find_placement(
                [mp], g.placed(), memory_slices=p.mig_memory_slices, compute_slices=p.mig_compute_slices
            )
            if found is None:
                raise MigOperationError(f"GPU {gpu_index}: no free placement for {mp.name} (insufficient resources)")
            start = found[0]
        else:
            problem = placement_problem(
                mp, start, g.placed(), memory_slices=p.mig_memory_slices, compute_slices=p.mig_compute_slices
            )
            if problem:
                raise MigOperationError(f"GPU {gpu_index}: {problem}")
        inst = g.add_instance(mp, start)
        self._save()
        log.info("sim_gpu_instance_created", gpu=gpu_index, profile=mp.name, gi=inst.gi, start=start)
        return next(d for d in g.mig_devices() if d.gpu_instance_id == inst.gi)

    def _destroy(self, hop: Hop, gpu_index: int, gpu_instance_id: int) -> None:
        g = self._mig_gpu(hop, gpu_index)
        if g.instances.pop(gpu_instance_id, None) is None:
            have = ", ".join(str(gi) for gi in sorted(g.instances)) or "none"
            raise MigOperationError(f"GPU {gpu_index}: no GPU instance {gpu_instance_id} (existing: {have})")
        self._save()
        log.info("sim_gpu_instance_destroyed", gpu=gpu_index, gi=gpu_instance_id)

    async def gpu_processes(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        """The injected holders of this GPU (``set_holders``), as NVML's process lists would show them."""
        return await self._sweeper.call_in_hop("nvmlDeviceGetComputeRunningProcesses", self._processes, gpu_index)

    def _processes(self, hop: Hop, gpu_index: int) -> tuple[GpuProcess, ...]:
        return self._mig_gpu(hop, gpu_index).holders

    # ---- MIG fault injection and persistence

    def set_holders(self, gpu_index: int, processes: Iterable[GpuProcess]) -> None:
        """Processes that use this GPU from now on (empty: none). They block nothing in the simulator itself;
        the MIG executor finds them and refuses destructive steps without --force."""
        g = self._gpu(gpu_index)
        g.holders = tuple(replace(p, gpu_index=gpu_index) for p in processes)
        self._save()

    def block_reset(self, kind: str | None, reason: str = "") -> None:
        """Make GPU resets fail: ``reboot`` as in a passthrough VM (NVML_ERROR_RESET_REQUIRED), ``in-use`` as
        when nvidia_drm or another client holds the GPU; None lets resets work again."""
        if kind not in (None, "reboot", "in-use"):
            raise ValueError(f"unknown reset blocker {kind!r}; expected reboot or in-use")
        self._reset_blocker = None if kind is None else (kind, reason)

    def use_state_file(self, path: Path) -> None:
        """Keep the MIG state (modes, instances with their UUIDs, holders) in ``path``: read it now when it
        describes this node (same profile, count and seed), write it after every change. Two separate
        commands on one sandbox then see the same GPUs, as on a real node."""
        self._state_file = path
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._save()
            return
        except (OSError, ValueError) as err:
            log.warning("sim_mig_state_unreadable", path=str(path), error=str(err))
            self._save()
            return
        if not self._load(doc):
            log.warning("sim_mig_state_other_node", path=str(path))
            self._save()

    def _identity(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "profile": self.profile.key, "count": self.count, "seed": self.seed}

    def _load(self, doc: Any) -> bool:
        if not isinstance(doc, dict) or {k: doc.get(k) for k in self._identity()} != self._identity():
            return False
        try:
            for raw in doc["gpus"]:
                g = self._gpu(int(raw["index"]))
                g.mig_enabled, g.mig_pending = bool(raw["mig_enabled"]), bool(raw["mig_pending"])
                g.created = int(raw["created"])
                g.instances.clear()
                for inst in raw["instances"]:
                    g.add_instance(self.profile.mig_profile(inst["profile"]), int(inst["start"]), uuid=inst["uuid"])
                g.holders = tuple(
                    GpuProcess(int(h["pid"]), str(h["name"]), g.index, h.get("gpu_instance_id"), int(h.get("mib", 0)))
                    for h in raw.get("holders", [])
                )
        except (KeyError, TypeError, ValueError, IndexError, ConfigError) as err:
            log.warning("sim_mig_state_bad", error=str(err))
            return False
        return True

    def _save(self) -> None:
        if self._state_file is None:
            return
        doc = {
            **self._identity(),
            "gpus": [
                {
                    "index": g.index,
                    "mig_enabled": g.mig_enabled,
                    "mig_pending": g.mig_pending,
                    "created": g.created,
                    "instances": [
                        {"profile": i.profile.name, "start": i.start, "uuid": i.uuid}
                        for i in sorted(g.instances.values(), key=lambda i: i.gi)
                    ],
                    "holders": [
                        {"pid": h.pid, "name": h.name, "gpu_instance_id": h.gpu_instance_id, "mib": h.used_memory_mib}
                        for h in g.holders
                    ],
                }
                for g in self._gpus
            ],
        }
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._state_file, (json.dumps(doc, indent=1) + "\n").encode())

    def reboot(self) -> None:
        """What a node reboot does to the GPUs: pending MIG modes become current, every instance is gone
        (the MIG mode itself survives), holders and reset blockers are gone."""
        for g in self._gpus:
            g.mig_enabled = g.mig_pending
            g.instances.clear()
            g.holders = ()
        self._reset_blocker = None
        self._save()
