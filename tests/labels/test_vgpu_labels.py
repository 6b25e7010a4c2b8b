"""vGPU labels from PCI configuration space, with GFD's own mock devices (fixtures/gfd/vgpu_pci_configs.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.labels import vgpu
from nodeagent.labels.facts import NodeFacts
from nodeagent.labels.labelers import compute

DOC = json.loads((Path(__file__).parent / "fixtures" / "gfd" / "vgpu_pci_configs.json").read_text())
PASSTHROUGH = bytes(DOC["passthrough"]["config"])
VGPU = bytes(DOC["vgpu"]["config"])


@pytest.mark.parametrize("kind", ["passthrough", "vgpu"])
def test_vendor_capability_as_gfd_reads_it(kind: str) -> None:
    expected = DOC[kind]
    capability = vgpu.vendor_capability(bytes(expected["config"]))
    assert capability is not None
    assert len(capability) == expected["capability_length"]
    assert capability[0] == 0x09
    assert vgpu.is_vgpu(capability) is expected["is_vgpu"]


def test_host_driver_version_and_branch() -> None:
    capability = vgpu.vendor_capability(VGPU)
    assert capability is not None
    assert vgpu.host_driver(capability) == (DOC["vgpu"]["host_driver_version"], DOC["vgpu"]["host_driver_branch"])


def test_labels_for_a_vgpu_guest_and_for_passthrough() -> None:
    assert vgpu.vgpu_labels((PASSTHROUGH,)) == ({"nvidia.com/vgpu.present": "false"}, [])
    labels, _ = vgpu.vgpu_labels((PASSTHROUGH, VGPU))
    assert labels == {
        "nvidia.com/vgpu.present": "true",
        "nvidia.com/vgpu.host-driver-version": "460.16",
        "nvidia.com/vgpu.host-driver-branch": "r460_00",
    }
    facts = NodeFacts((), "460.16", 11020, pci_configs=(VGPU,))
    assert compute(facts).labels["nvidia.com/vgpu.host-driver-branch"] == "r460_00"


def test_no_vgpu_labels_without_the_full_configuration_space() -> None:
    labels, reasons = vgpu.vgpu_labels((PASSTHROUGH[:64],))
    assert labels == {}
    assert "run privileged" in reasons[0]
    assert vgpu.vgpu_labels(None) == ({}, ["vGPU labels skipped: the PCI devices could not be listed"])


def test_capability_list_absent_or_looping() -> None:
    no_list = bytearray(PASSTHROUGH)
    no_list[vgpu.STATUS] &= ~vgpu.STATUS_CAPABILITY_LIST
    assert vgpu.vendor_capability(bytes(no_list)) is None
    loop = bytearray(256)
    loop[vgpu.STATUS] = vgpu.STATUS_CAPABILITY_LIST
    loop[vgpu.CAPABILITY_LIST] = 0x40
    loop[0x40:0x43] = bytes([0x05, 0x40, 0x08])  # points at itself
    assert vgpu.vendor_capability(bytes(loop)) is None
