"""The counters CSV parser (dcgm-exporter's format) and its line-numbered errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.errors import ConfigError
from nodeagent.metrics.counters_csv import parse
from nodeagent.metrics.fields import Kind, default_counters
from nodeagent.metrics.subsystem import load_counters

# Written in dcgm-exporter's layout: aligned columns, a space before a comma, commented-out fields,
# blank lines, a help text with a quoted comma and one with no help at all.
DCGM_STYLE = """\
# Format
# If line starts with a '#' it is considered a comment
# DCGM FIELD, Prometheus metric type, help message

# Clocks
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_MEM_CLOCK, gauge, Memory clock frequency (in MHz).

DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).
# DCGM_FI_DEV_POWER_VIOLATION,       counter, Throttling duration due to power constraints (in us).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, "Energy, since boot (in mJ)."
DCGM_FI_DEV_FB_TOTAL, gauge,
DCGM_FI_DRIVER_VERSION,        label, Driver Version
"""


def test_parses_dcgm_exporter_layout() -> None:
    result = parse(DCGM_STYLE, source="c.csv")
    assert [c.name for c in result.counters] == [
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_MEM_CLOCK",
        "DCGM_FI_DEV_DEC_UTIL",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_FB_TOTAL",
        "DCGM_FI_DRIVER_VERSION",
    ]
    by_name = {c.name: c for c in result.counters}
    assert by_name["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].help == "Energy, since boot (in mJ)."
    assert by_name["DCGM_FI_DEV_FB_TOTAL"].help == "Framebuffer memory total (MiB).", "empty help: built-in"
    assert by_name["DCGM_FI_DRIVER_VERSION"].kind is Kind.LABEL
    assert result.skipped == ()


def test_default_set_round_trips_through_csv() -> None:
    text = "\n".join(f"{c.name}, {c.kind}, {c.help}" for c in default_counters())
    assert parse(text).counters == default_counters()


def test_the_type_column_is_honoured() -> None:
    (c,) = parse("DCGM_FI_DEV_GPU_TEMP, counter, temp\n").counters
    assert c.kind is Kind.COUNTER
    assert c.spec.kind is Kind.GAUGE


def test_known_dcgm_field_without_nvml_source_is_skipped_with_its_line() -> None:
    result = parse("DCGM_FI_DEV_GPU_TEMP, gauge, t\n\nDCGM_FI_DEV_OEM_INFOROM_VER, label, OEM inforom version\n")
    assert [c.name for c in result.counters] == ["DCGM_FI_DEV_GPU_TEMP"]
    (skipped,) = result.skipped
    assert skipped.startswith("DCGM_FI_DEV_OEM_INFOROM_VER (line 3): DCGM field 56 is not read")


def test_a_repeated_name_is_a_warning_and_the_first_line_wins() -> None:
    result = parse("DCGM_FI_DEV_GPU_TEMP, gauge, first\nDCGM_FI_DEV_GPU_TEMP, counter, second\n")
    assert [(c.name, c.kind, c.help) for c in result.counters] == [("DCGM_FI_DEV_GPU_TEMP", Kind.GAUGE, "first")]
    assert result.skipped == ("DCGM_FI_DEV_GPU_TEMP (line 2): listed again, line 1 is used",)


EXPORTER_CSVS = Path(__file__).parent / "data" / "dcgm-exporter"


def _enabled_names(text: str) -> list[str]:
    return [ln.split(",")[0].strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["default-counters.csv", "dcp-metrics-included.csv"])
def test_dcgm_exporters_own_files_load_with_every_field_served(name: str) -> None:
    text = (EXPORTER_CSVS / name).read_text()
    result = parse(text, source=name)
    assert [c.name for c in result.counters] == _enabled_names(text)
    assert result.skipped == ()
    by_name = {c.name: c for c in result.counters}
    assert by_name["DCGM_FI_DEV_POWER_USAGE"].help == "Power draw (in W)."


@pytest.mark.parametrize("name", ["default-counters.csv", "dcp-metrics-included.csv"])
def test_every_commented_out_line_of_the_exporters_files_loads_when_uncommented(name: str) -> None:
    """Uncommenting any field (the InfoROM labels included) is accepted; what NVML cannot serve is a warning."""
    lines = (EXPORTER_CSVS / name).read_text().splitlines()
    uncommented = [ln.lstrip("# ") for ln in lines if ln.startswith("# DCGM_")]
    result = parse("\n".join(uncommented), source=name)
    served = {c.name for c in result.counters}
    skipped = {s.split(" ")[0] for s in result.skipped}
    assert served | skipped == {ln.split(",")[0].strip() for ln in uncommented}
    assert skipped == {
        "DCGM_FI_DEV_OEM_INFOROM_VER",
        "DCGM_FI_DEV_ECC_INFOROM_VER",
        "DCGM_FI_DEV_POWER_INFOROM_VER",
        "DCGM_FI_DEV_INFOROM_IMAGE_VER",
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0",
        "DCGM_EXP_P2P_STATUS",
    } - ({"DCGM_EXP_P2P_STATUS"} if name != "default-counters.csv" else set())
    exporter_own = {"DCGM_EXP_XID_ERRORS_COUNT", "DCGM_EXP_CLOCK_EVENTS_COUNT", "DCGM_EXP_GPU_HEALTH_STATUS"}
    assert exporter_own <= served or name != "default-counters.csv"


def test_the_1x_compatibility_file_loads_under_its_legacy_names() -> None:
    """dcgm-exporter resolves the 1.x names through DCGM's legacy table and names series as the file does."""
    text = (EXPORTER_CSVS / "1.x-compatibility-metrics.csv").read_text()
    result = parse(text, source="1.x-compatibility-metrics.csv")
    names = [c.name for c in result.counters]
    assert names == list(dict.fromkeys(_enabled_names(text)))
    by_name = {c.name: c for c in result.counters}
    assert by_name["dcgm_sm_clock"].spec.name == "DCGM_FI_DEV_SM_CLOCK"
    assert by_name["dcgm_fi_prof_pcie_tx_bytes"].spec.name == "DCGM_FI_PROF_PCIE_TX_BYTES"
    assert by_name["dcgm_fi_prof_pcie_tx_bytes"].kind is Kind.COUNTER
    # The file lists dcgm_fi_prof_pcie_{tx,rx}_bytes twice: warnings naming the repeated lines.
    assert [s.split(" ")[0] for s in result.skipped] == ["dcgm_fi_prof_pcie_tx_bytes", "dcgm_fi_prof_pcie_rx_bytes"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "# c\nDCGM_FI_DEV_GPU_TEMPP, gauge, t\n",
            2,
            "unknown DCGM field DCGM_FI_DEV_GPU_TEMPP; did you mean DCGM_FI_DEV_GPU_TEMP?",
        ),
        ("DCGM_FI_DEV_NOT_A_THING, gauge, t\n", 1, "unknown DCGM field DCGM_FI_DEV_NOT_A_THING"),
        ("DCGM_FI_DEV_GPU_TEMP, gauge\n", 1, "expected 3 columns `field, type, help`, got 2"),
        ("DCGM_FI_DEV_GPU_TEMP, gauge, a, b\n", 1, "expected 3 columns"),
        ("\n\nDCGM_FI_DEV_GPU_TEMP, gage, t\n", 3, "unknown type 'gage'; valid: gauge, counter, label"),
        ("DCGM_FI_DEV_GPU_TEMP, histogram, t\n", 1, "type histogram is not supported"),
        ("DCGM_FI_DEV_GPU_TEMP, label, t\n", 1, "must have type gauge or counter, not label"),
        ("DCGM_FI_DRIVER_VERSION, gauge, t\n", 1, "must have type label, not gauge"),
        (", gauge, t\n", 1, "empty field name"),
        ('DCGM_FI_DEV_GPU_TEMP, gauge, "unterminated\n', 1, "malformed CSV"),
    ],
)
def test_errors_name_the_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, source="/etc/nodeagent/counters.csv")
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"/etc/nodeagent/counters.csv:{line}: ")


async def test_load_counters_from_file(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(DCGM_STYLE)
    counters, source = await load_counters(str(path))
    assert source == str(path)
    assert len(counters.counters) == 6
    default, source = await load_counters("")
    assert source == "built-in" and default.counters == default_counters()


async def test_load_counters_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.csv: metrics\.counters_csv: counters file not found"):
        await load_counters(str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"DCGM_FI_DEV_GPU_TEMP, gauge, \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read counters file"):
        await load_counters(str(bad))
