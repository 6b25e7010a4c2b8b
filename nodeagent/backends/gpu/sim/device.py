"""One simulated GPU (``SimGpu``): identity from the seed, the physics of its readings, its MIG instances.

Identities (UUIDs, PCI bus ids, minor numbers, serials) are derived from the seed, so the same seed gives
the same node. Readings move over (injectable) time: utilization wanders between idle, inference and
training phases; power follows utilization; temperature follows power with a lag; energy integrates
power; framebuffer usage follows the workload, and used + free + reserved is the total, as NVML's
memory info v2 reports it. Readings the profile marks NotSupported are absent, as with NVML.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.backends.gpu.sim.profiles import GpuProfile
from nodeagent.model.gpu import (
    GPM_READINGS,
    MIG_READINGS,
    NVLINK_ERROR_READINGS,
    MigDevice,
    MigProfile,
    Reading,
)
from nodeagent.model.mig import GpuProcess, gpu_instance_id

_UTIL_ONLY_WITHOUT_MIG = frozenset({Reading.GPU_UTIL_PCT, Reading.MEM_COPY_UTIL_PCT})
MIG_GPM = MIG_READINGS & GPM_READINGS


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


class Workload:
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
class SimCompute:
    """A compute instance inside a simulated GPU instance: its id, size and start in compute slices."""

    ci: int
    slices: int
    start: int
    uuid: str


@dataclass
class SimInstance:
    """A simulated GPU instance with its compute instances (one MIG device each); readings are per GPU
    instance, as DCGM's GPU-instance entities."""

    gi: int
    profile: MigProfile
    start: int
    work: Workload
    computes: list[SimCompute]
    gpm_primed: bool = False

    @property
    def uuid(self) -> str:
        """The UUID of its first compute instance's MIG device."""
        return self.computes[0].uuid

    def compute_name(self, c: SimCompute) -> str:
        """``1c.3g.40gb``, or the GPU-instance profile for a compute instance spanning it."""
        return self.profile.name if c.slices == self.profile.compute_slices else f"{c.slices}c.{self.profile.name}"


class SimGpu:
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
        self.instances: dict[int, SimInstance] = {}
        self.created = 0
        """GPU instances created so far: each creation gets a new MIG UUID, as on the hardware."""
        self.holders: tuple[GpuProcess, ...] = ()
        usable = p.memory_total_mib - p.memory_reserved_mib
        self.work = Workload(self.rng, usable)
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
            Reading.NVLINK_BANDWIDTH_TOTAL: 0.0,  # set by the sampler, which knows whether it was asked for
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

    def instance_values(self, inst: SimInstance) -> dict[Reading, float]:
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
        pairs = [
            (inst, c)
            for inst in sorted(self.instances.values(), key=lambda i: i.gi)
            for c in sorted(inst.computes, key=lambda c: c.ci)
        ]
        return tuple(
            MigDevice(
                uuid=c.uuid,
                gpu_index=self.index,
                mig_index=n,
                gpu_instance_id=inst.gi,
                compute_instance_id=c.ci,
                profile=inst.compute_name(c),
                placement_start=inst.start,
                placement_size=inst.profile.slices,
                memory_total_mib=inst.profile.memory_mib,
                compute_start=c.start,
            )
            for n, (inst, c) in enumerate(pairs)
        )

    def add_instance(
        self,
        mp: MigProfile,
        start: int,
        *,
        uuid: str = "",
        compute: Sequence[tuple[int, int]] = (),
        uuids: Sequence[str] = (),
    ) -> SimInstance:
        """A GPU instance at ``start`` with compute instances (slices, start), one spanning it when none are
        given; compute instance ids count from 0 in that order. ``uuids`` (or ``uuid`` for the first) restore
        known MIG UUIDs; new ones are derived from the creation counter, as each creation on the hardware
        gets a new UUID."""
        p = self.profile
        gi = gpu_instance_id(start, mp.slices, p.mig_memory_slices)
        rng = random.Random(f"{self.seed}/{p.key}/{self.index}/gi{gi}")
        layout = list(compute) or [(mp.compute_slices, 0)]
        known = list(uuids) or ([uuid] if uuid else [])
        computes = []
        for ci, (slices, cstart) in enumerate(layout):
            mig_uuid = known[ci] if ci < len(known) and known[ci] else ""
            if not mig_uuid:
                mig_uuid = _uuid("MIG", "mig", self.uuid, gi, ci, self.created)
                self.created += 1
            computes.append(SimCompute(ci, slices, cstart, mig_uuid))
        inst = SimInstance(gi=gi, profile=mp, start=start, work=Workload(rng, mp.memory_mib * 0.97), computes=computes)
        self.instances[gi] = inst
        return inst

    def placed(self) -> list[tuple[MigProfile, int]]:
        return [(i.profile, i.start) for i in self.instances.values()]
