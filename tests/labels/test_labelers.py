"""GFD's own expectations as table tests: the label sets of k8s-device-plugin's labeler tests and the
label patterns of its end-to-end expected-output files (stored under fixtures/gfd)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nodeagent.labels import labelers
from nodeagent.labels.facts import (
    GpuFacts,
    MigAttributes,
    MigFacts,
    MigStrategy,
    NodeFacts,
    Replication,
    Sharing,
    SharingStrategy,
)
from nodeagent.labels.labelers import LabelingError, compute

FIXTURES = Path(__file__).parent / "fixtures" / "gfd"
CASES = json.loads((FIXTURES / "mig_strategy_cases.json").read_text())["cases"]


def _mock_device(spec: dict[str, Any]) -> GpuFacts:
    if spec["kind"] == "full":
        return GpuFacts("MOCKMODEL", (8, 0), 300, pci_class=0)
    migs = tuple(
        MigFacts(
            f"{m['gi']}g.{m['gb']}gb",
            MigAttributes(
                memory_mb=m["gb"],
                slices_gi=m["gi"],
                slices_ci=m["ci"],
                multiprocessors=m["attributes"].get("multiprocessors", 0),
                engines_copy=m["attributes"].get("copy", 0),
                engines_decoder=m["attributes"].get("decoder", 0),
                engines_encoder=m["attributes"].get("encoder", 0),
                engines_jpeg=m["attributes"].get("jpeg", 0),
                engines_ofa=m["attributes"].get("ofa", 0),
            ),
        )
        for m in spec.get("migs", [])
    )
    return GpuFacts("MOCKMODEL", (0, 0), 300, mig_capable=True, mig_enabled=True, pci_class=0, migs=migs)


def _mock_node(case: dict[str, Any]) -> NodeFacts:
    replicated = {name: Replication(n) for name, n in case.get("time_slicing", {}).items()}
    return NodeFacts(
        gpus=tuple(_mock_device(d) for d in case["devices"]),
        driver_version="400.300",
        cuda_driver_version=8000,
        mig_strategy=MigStrategy(case["strategy"]),
        sharing=Sharing(SharingStrategy.TIME_SLICING if replicated else SharingStrategy.NONE, replicated),
    )


@pytest.mark.parametrize("case", CASES, ids=[f"{c['strategy']}: {c['description']}" for c in CASES])
def test_resource_labels_match_gfd_table(case: dict[str, Any]) -> None:
    labels, _ = labelers.resource_labels(_mock_node(case))
    assert labels == case["expected"]


def test_invalid_single_strategy_gives_a_reason() -> None:
    case = next(c for c in CASES if c["description"] == "mixed mig config returns MIG invalid label")
    _, warnings = labelers.resource_labels(_mock_node(case))
    assert warnings == ["invalid configuration for mig-strategy=single: more than one MIG device type present on node"]


# ------------------------------------------------------------------------ a real node: H100 x8, MIG


def _h100(index: int, migs: tuple[MigFacts, ...] = (), enabled: bool = False) -> GpuFacts:
    return GpuFacts(
        "NVIDIA H100 80GB HBM3",
        (9, 0),
        81559,
        mig_capable=True,
        mig_enabled=enabled,
        pci_class=0x030200,
        migs=migs,
    )


def _mig(profile: str, memory: int, g: int, sms: int, dec: int, jpeg: int, ofa: int = 0) -> MigFacts:
    return MigFacts(profile, MigAttributes(memory, g, g, sms, 1 if g < 7 else 8, dec, 0, jpeg, ofa))


def _h100_node(strategy: MigStrategy, gpus: tuple[GpuFacts, ...]) -> NodeFacts:
    return NodeFacts(
        gpus=gpus,
        driver_version="580.159.04",
        cuda_driver_version=13000,
        machine_type="DGX H100",
        mig_strategy=strategy,
        timestamp=1724632719,
    )


def _matches_pattern_file(labels: dict[str, str], name: str) -> None:
    """GFD's end-to-end check: every pattern line matches some label and every label matches a line."""
    patterns = [line for line in (FIXTURES / name).read_text().splitlines() if line.strip()]
    lines = [f"{k}={v}" for k, v in labels.items()]
    for pattern in patterns:
        assert any(re.match(pattern, line) for line in lines), f"{name}: no label matches {pattern}"
    for line in lines:
        assert any(re.match(p, line) for p in patterns), f"{name}: {line} matches no pattern"


def test_h100_none_strategy_matches_gfd_expected_output() -> None:
    result = compute(_h100_node(MigStrategy.NONE, tuple(_h100(i) for i in range(8))), gpu_present=False)
    _matches_pattern_file(dict(result.labels), "expected-output.txt")
    _matches_pattern_file(dict(result.labels), "expected-output-mig-none.txt")
    assert result.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert result.labels["nvidia.com/gpu.machine"] == "DGX-H100"
    assert result.labels["nvidia.com/gpu.family"] == "hopper"
    assert result.labels["nvidia.com/gpu.count"] == "8"
    assert result.labels["nvidia.com/cuda.driver-version.revision"] == "04"
    assert result.labels["nvidia.com/cuda.runtime-version.full"] == "13.0"
    assert result.labels["nvidia.com/gfd.timestamp"] == "1724632719"


def test_h100_single_strategy_matches_gfd_expected_output() -> None:
    migs = tuple(_mig("1g.10gb", 9856, 1, 16, 1, 1) for _ in range(7))
    gpus = tuple(_h100(i, migs, enabled=True) for i in range(8))
    result = compute(_h100_node(MigStrategy.SINGLE, gpus), gpu_present=False)
    _matches_pattern_file(dict(result.labels), "expected-output-mig-single.txt")
    assert result.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"
    assert result.labels["nvidia.com/gpu.count"] == "56"
    assert result.labels["nvidia.com/gpu.memory"] == "9856"
    assert result.labels["nvidia.com/gpu.replicas"] == "1"


def test_h100_mixed_strategy_matches_gfd_expected_output() -> None:
    migs = (_mig("3g.40gb", 40192, 3, 60, 3, 3), _mig("3g.40gb", 40192, 3, 60, 3, 3))
    gpus = tuple(_h100(i, migs, enabled=True) for i in range(8))
    result = compute(_h100_node(MigStrategy.MIXED, gpus), gpu_present=False)
    _matches_pattern_file(dict(result.labels), "expected-output-mig-mixed.txt")
    assert result.labels["nvidia.com/mig-3g.40gb.count"] == "16"
    assert result.labels["nvidia.com/mig-3g.40gb.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"
    # The parent GPUs keep their full-GPU labels without sharing: replicas 0.
    assert result.labels["nvidia.com/gpu.replicas"] == "0"


def test_mixed_strategy_writes_plus_as_dot() -> None:
    gpus = (_h100(0, (_mig("1g.10gb+me", 9856, 1, 16, 1, 1, 1),), enabled=True),)
    labels = compute(_h100_node(MigStrategy.MIXED, gpus)).labels
    assert labels["nvidia.com/mig-1g.10gb.me.count"] == "1"
    assert labels["nvidia.com/mig-1g.10gb.me.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb.me"
    assert labels["nvidia.com/mig-1g.10gb.me.engines.ofa"] == "1"
    assert labels["nvidia.com/gpu.present"] == "true"


# ------------------------------------------------------------------------------- single labelers


@pytest.mark.parametrize(
    ("major", "minor", "family"),
    [
        (1, 0, "tesla"),
        (2, 1, "fermi"),
        (3, 5, "kepler"),
        (5, 2, "maxwell"),
        (6, 1, "pascal"),
        (7, 0, "volta"),
        (7, 5, "turing"),
        (8, 0, "ampere"),
        (8, 6, "ampere"),
        (8, 9, "ada-lovelace"),
        (9, 0, "hopper"),
        (10, 0, "blackwell"),
        (12, 0, "blackwell"),
        (13, 0, "rubin"),
        (4, 0, "undefined"),
    ],
)
def test_family_from_compute_capability(major: int, minor: int, family: str) -> None:
    assert labelers.arch_family(major, minor) == family


@pytest.mark.parametrize(
    ("classes", "mode"),
    [
        ([0x030000], "graphics"),
        ([0x030200], "compute"),
        ([0x068000], "unknown"),
        ([0x030200, 0x030200, 0x030200], "compute"),
        ([0x030200, 0x030000], "unknown"),
        ([None], "unknown"),
    ],
)
def test_gpu_mode_from_pci_classes(classes: list[int | None], mode: str) -> None:
    gpus = tuple(GpuFacts("G", (9, 0), 1, pci_class=c) for c in classes)
    assert labelers.gpu_mode_labels(gpus) == {"nvidia.com/gpu.mode": mode}


def test_mig_capable_true_when_any_gpu_is() -> None:
    assert labelers.mig_capability_labels(()) == {}
    plain = GpuFacts("G", (9, 0), 1)
    capable = GpuFacts("G", (9, 0), 1, mig_capable=True)
    assert labelers.mig_capability_labels((plain, plain)) == {"nvidia.com/mig.capable": "false"}
    assert labelers.mig_capability_labels((plain, capable)) == {"nvidia.com/mig.capable": "true"}


def test_mps_capable_only_with_mps_sharing_and_fails_with_mig() -> None:
    plain = (GpuFacts("G", (9, 0), 1),)
    assert labelers.sharing_labels(plain, Sharing()) == {"nvidia.com/mps.capable": "false"}
    mps = Sharing(SharingStrategy.MPS, {"nvidia.com/gpu": Replication(2)})
    assert labelers.sharing_labels(plain, mps) == {"nvidia.com/mps.capable": "true"}
    with pytest.raises(LabelingError, match="MPS sharing is not supported"):
        labelers.sharing_labels((GpuFacts("G", (9, 0), 1, mig_enabled=True),), mps)


def test_renamed_shared_resource_has_no_shared_suffix() -> None:
    sharing = Sharing(SharingStrategy.TIME_SLICING, {"nvidia.com/gpu": Replication(4, renamed=True)})
    labels = labelers.full_gpu_labels((GpuFacts("Tesla T4", (7, 5), 15360),), sharing)
    assert labels["nvidia.com/gpu.product"] == "Tesla-T4"
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"


@pytest.mark.parametrize(
    ("version", "expected"),
    [("580.159.04", ("580", "159", "04")), ("400.300", ("400", "300", ""))],
)
def test_driver_version_labels(version: str, expected: tuple[str, str, str]) -> None:
    facts = NodeFacts((), version, 12020)
    labels = labelers.version_labels(facts)
    assert (
        labels["nvidia.com/cuda.driver-version.major"],
        labels["nvidia.com/cuda.driver-version.minor"],
        labels["nvidia.com/cuda.driver-version.revision"],
    ) == expected
    assert labels["nvidia.com/cuda.driver.rev"] == expected[2]
    assert labels["nvidia.com/cuda.runtime.major"] == "12"
    assert labels["nvidia.com/cuda.runtime-version.full"] == "12.2"


def test_bad_driver_version_is_an_error() -> None:
    with pytest.raises(LabelingError, match=r'"580" does not match format "X.Y\[.Z\]"'):
        labelers.version_labels(NodeFacts((), "580", 13000))


def test_imex_clique_only_when_unique() -> None:
    a = GpuFacts("G", (10, 0), 1, fabric=("c1a2", "7"))
    b = GpuFacts("G", (10, 0), 1, fabric=("c1a2", "8"))
    assert labelers.imex_labels((a, a)) == {"nvidia.com/gpu.clique": "c1a2.7"}
    assert labelers.imex_labels((a, b)) == {}
    assert labelers.imex_labels((GpuFacts("G", (10, 0), 1),)) == {}


def test_machine_type_sanitised_or_unknown() -> None:
    assert labelers.machine_type_labels(NodeFacts((), "1.2", 0, machine_type="ProLiant DL380 Gen10 (x)")) == {
        "nvidia.com/gpu.machine": "ProLiant-DL380-Gen10-x"
    }
    assert labelers.machine_type_labels(NodeFacts((), "1.2", 0, machine_type=None)) == {
        "nvidia.com/gpu.machine": "unknown"
    }


def test_invalid_values_are_dropped_with_reason() -> None:
    long_name = "NVIDIA " + "X" * 70
    facts = NodeFacts((GpuFacts(long_name, (9, 0), 1, pci_class=0x030200),), "580.1.2", 13000, machine_type="Box-")
    result = compute(facts)
    dropped = {key: reason for key, _, reason in result.dropped}
    assert "nvidia.com/gpu.product" not in result.labels
    assert "no more than 63 characters" in dropped["nvidia.com/gpu.product"]
    assert "must start and end with an alphanumeric" in dropped["nvidia.com/gpu.machine"]
    assert result.labels["nvidia.com/gpu.count"] == "1"


def test_no_gpus_gives_only_the_timestamp() -> None:
    assert dict(compute(NodeFacts((), "580.1.2", 13000, timestamp=5)).labels) == {"nvidia.com/gfd.timestamp": "5"}
