"""Sampling tiers: which readings the metrics subsystem can afford every cycle and which less often.

FAST readings cost microseconds per GPU; SLOW ones cost milliseconds on a real H100 (energy, PCIe
throughput, ECC and violation counters), measured with NVML on a real H100 80GB HBM3.
"""

from __future__ import annotations

from enum import StrEnum

from nodeagent.model.gpu import Reading


class Tier(StrEnum):
    """How often a reading can be afforded: FAST costs microseconds, SLOW costs milliseconds per GPU."""

    FAST = "fast"
    SLOW = "slow"


SLOW_READINGS: frozenset[Reading] = frozenset(
    {
        Reading.TOTAL_ENERGY_MJ,
        Reading.PCIE_TX_THROUGHPUT_KBS,
        Reading.PCIE_RX_THROUGHPUT_KBS,
        Reading.NVLINK_BANDWIDTH_TOTAL,
        Reading.NVLINK_CRC_FLIT_ERRORS,
        Reading.NVLINK_CRC_DATA_ERRORS,
        Reading.NVLINK_REPLAY_ERRORS,
        Reading.NVLINK_RECOVERY_ERRORS,
        Reading.ECC_SBE_VOL_TOTAL,
        Reading.ECC_DBE_VOL_TOTAL,
        Reading.ECC_SBE_AGG_TOTAL,
        Reading.ECC_DBE_AGG_TOTAL,
        Reading.POWER_VIOLATION_NS,
        Reading.THERMAL_VIOLATION_NS,
        Reading.SYNC_BOOST_VIOLATION_NS,
        Reading.BOARD_LIMIT_VIOLATION_NS,
        Reading.LOW_UTIL_VIOLATION_NS,
        Reading.RELIABILITY_VIOLATION_NS,
    }
)


def tier_of(reading: Reading) -> Tier:
    return Tier.SLOW if reading in SLOW_READINGS else Tier.FAST
