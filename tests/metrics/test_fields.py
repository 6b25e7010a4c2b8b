"""The field table: dcgm-exporter's default set, types, units, tiers and label fields."""

from __future__ import annotations

from nodeagent.metrics.fields import (
    BY_ID,
    DEFAULT_FIELDS,
    FIELDS,
    Kind,
    Scope,
    Source,
    dcgm_names,
    default_counters,
    resolve,
    unserved_reason,
)
from nodeagent.metrics.tiers import SLOW_READINGS, Tier
from nodeagent.model.gpu import GPM_READINGS, Reading
from tests.metrics.fakes import gpu_info

# dcgm-exporter's etc/default-counters.csv, enabled lines (telemetry-labels-mig.md §1.1), with types.
DCGM_DEFAULTS = {
    "DCGM_FI_DEV_SM_CLOCK": "gauge",
    "DCGM_FI_DEV_MEM_CLOCK": "gauge",
    "DCGM_FI_DEV_MEMORY_TEMP": "gauge",
    "DCGM_FI_DEV_GPU_TEMP": "gauge",
    "DCGM_FI_DEV_POWER_USAGE": "gauge",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "counter",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "counter",
    "DCGM_FI_DEV_GPU_UTIL": "gauge",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "gauge",
    "DCGM_FI_DEV_ENC_UTIL": "gauge",
    "DCGM_FI_DEV_DEC_UTIL": "gauge",
    "DCGM_FI_DEV_XID_ERRORS": "gauge",
    "DCGM_FI_DEV_FB_FREE": "gauge",
    "DCGM_FI_DEV_FB_USED": "gauge",
    "DCGM_FI_DEV_FB_RESERVED": "gauge",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": "counter",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": "gauge",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": "counter",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": "counter",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": "gauge",
    "DCGM_FI_DRIVER_VERSION": "label",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "gauge",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "gauge",
    "DCGM_FI_PROF_DRAM_ACTIVE": "gauge",
    "DCGM_FI_PROF_PCIE_TX_BYTES": "gauge",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "gauge",
}


def test_default_set_is_dcgm_exporters_with_the_same_types() -> None:
    counters = default_counters()
    assert [c.name for c in counters] == list(DCGM_DEFAULTS)
    assert {c.name: str(c.kind) for c in counters} == DCGM_DEFAULTS
    assert len(DEFAULT_FIELDS) == 26


def test_every_reading_field_maps_to_a_distinct_reading() -> None:
    readings = [f.reading for f in FIELDS.values() if f.source is Source.READING]
    assert None not in readings
    assert len(readings) == len(set(readings))
    assert set(readings) == set(Reading), "every reading the backends offer has a DCGM name"


def test_gpm_fields_come_from_gpm_readings() -> None:
    for name in ("GR_ENGINE_ACTIVE", "PIPE_TENSOR_ACTIVE", "DRAM_ACTIVE", "PCIE_TX_BYTES", "PCIE_RX_BYTES"):
        assert FIELDS[f"DCGM_FI_PROF_{name}"].reading in GPM_READINGS


def test_units_follow_dcgm() -> None:
    # DCGM maps *_VIOLATION onto NVML's perf policy counters, in ns (dcgm_fields.h since DCGM 4.1 says so;
    # dcgm-exporter's CSV: "Throttling duration due to power constraints (in ns)"): no conversion.
    violations = [f for f in FIELDS.values() if f.name.endswith("_VIOLATION")]
    assert len(violations) == 6 and all(f.reading is not None and f.reading.endswith("_ns") for f in violations)
    assert FIELDS["DCGM_FI_DEV_POWER_USAGE"].reading is Reading.POWER_W
    assert FIELDS["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].reading is Reading.TOTAL_ENERGY_MJ
    assert FIELDS["DCGM_FI_DEV_FB_USED"].reading is Reading.FB_USED_MIB
    assert all(f.scale == 1.0 for f in FIELDS.values())


def test_tiers_put_expensive_fields_on_the_slow_tier() -> None:
    assert FIELDS["DCGM_FI_DEV_GPU_TEMP"].tier is Tier.FAST
    assert FIELDS["DCGM_FI_DEV_FB_USED"].tier is Tier.FAST
    assert FIELDS["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].tier is Tier.SLOW
    assert FIELDS["DCGM_FI_DEV_PCIE_TX_THROUGHPUT"].tier is Tier.SLOW
    assert FIELDS["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].tier is Tier.SLOW
    assert FIELDS["DCGM_FI_DEV_XID_ERRORS"].tier is Tier.FAST
    for f in FIELDS.values():
        if f.reading in SLOW_READINGS:
            assert f.tier is Tier.SLOW, f.name


def test_mig_scopes() -> None:
    assert FIELDS["DCGM_FI_DEV_GPU_UTIL"].scope is Scope.GPU_ONLY
    assert FIELDS["DCGM_FI_DEV_FB_USED"].scope is Scope.INSTANCE
    assert FIELDS["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].scope is Scope.INSTANCE
    assert FIELDS["DCGM_FI_DEV_GPU_TEMP"].scope is Scope.DEVICE


def test_label_fields_read_static_facts() -> None:
    from nodeagent.model.gpu import Inventory

    gpu = gpu_info(0)
    inv = Inventory("fake", "580.159.04", "13.580.159.04", 13000, (gpu,))
    labels = {f.name: f.static(inv, gpu) for f in FIELDS.values() if f.kind is Kind.LABEL and f.static}
    assert labels == {
        "DCGM_FI_DRIVER_VERSION": "580.159.04",
        "DCGM_FI_NVML_VERSION": "13.580.159.04",
        "DCGM_FI_DEV_BRAND": "NVIDIA",
        "DCGM_FI_DEV_SERIAL": gpu.serial,
        "DCGM_FI_DEV_VBIOS_VERSION": "96.00.DA.00.0C",
    }


def test_every_dcgm_field_has_its_real_dcgm_id() -> None:
    """Ids from DCGM's field table: a legacy alias and the current name share one id."""
    names = dcgm_names()
    for spec in FIELDS.values():
        if spec.name.startswith("DCGM_FI_"):
            assert names[spec.name] == spec.field_id, spec.name
    assert len(BY_ID) == len(FIELDS)
    assert (FIELDS["DCGM_FI_DEV_POWER_USAGE"].field_id, FIELDS["DCGM_FI_DEV_XID_ERRORS"].field_id) == (155, 230)
    assert names["DCGM_FI_DEV_OEM_INFOROM_VER"] == names["DCGM_FI_DEV_INFOROM_OEM_VERSION"] == 56


def test_legacy_names_resolve_to_the_field_with_their_id() -> None:
    assert resolve("dcgm_sm_clock") is FIELDS["DCGM_FI_DEV_SM_CLOCK"]
    assert resolve("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS") is FIELDS["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"]
    assert resolve("DCGM_FI_DEV_NOT_A_FIELD") is None


def test_unserved_fields_say_why() -> None:
    assert "56" in (unserved_reason("DCGM_FI_DEV_OEM_INFOROM_VER") or "")
    assert "P2P" in (unserved_reason("DCGM_EXP_P2P_STATUS") or "")
    assert unserved_reason("DCGM_EXP_GPU_HEALTH_STATUS") is None  # served from the published health report
    assert unserved_reason("DCGM_FI_DEV_SM_CLOCK") is None  # served
    assert unserved_reason("DCGM_FI_DEV_NOT_A_FIELD") is None  # not a field at all
