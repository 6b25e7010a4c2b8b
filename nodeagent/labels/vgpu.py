"""GFD's vGPU labels from the PCI configuration space of NVIDIA devices. Pure.

A vGPU guest device carries a PCI vendor-specific capability (id 0x09) whose bytes 3-4 are ``VF``; its
records end with the host driver's version and branch (10 bytes each, NUL-padded). GFD labels
``nvidia.com/vgpu.present`` (true/false) and, for a vGPU, ``vgpu.host-driver-version`` and
``vgpu.host-driver-branch``. When the configuration space cannot be read in full (an unprivileged
container reads only 64 bytes) GFD emits no vGPU label at all; so does this.
"""

from __future__ import annotations

from collections.abc import Sequence

STATUS = 0x06
STATUS_CAPABILITY_LIST = 0x10
CAPABILITY_LIST = 0x34
VENDOR_SPECIFIC = 0x09
RECORD_START = 5
VERSION_LENGTH = 10
BRANCH_LENGTH = 10


class ConfigSpaceError(ValueError):
    """The configuration space is not complete (less than 256 bytes)."""


def vendor_capability(config: bytes) -> bytes | None:
    if len(config) < 256:
        raise ConfigSpaceError("entire PCI configuration is not read; run privileged to read all of it")
    if not config[STATUS] & STATUS_CAPABILITY_LIST:
        return None
    visited: set[int] = set()
    pos = config[CAPABILITY_LIST]
    while pos != 0 and pos not in visited and pos + 2 < len(config):
        cap_id, nxt, length = config[pos], config[pos + 1], config[pos + 2]
        if cap_id == 0xFF:
            break
        if cap_id == VENDOR_SPECIFIC:
            return config[pos : pos + length]
        visited.add(pos)
        pos = nxt
    return None


def is_vgpu(capability: bytes) -> bool:
    return len(capability) >= 5 and capability[3] == 0x56 and capability[4] == 0x46


def host_driver(capability: bytes) -> tuple[str, str] | None:
    """(version, branch) from the capability's records, or None when there is no such record."""
    pos = RECORD_START
    record = capability[pos] if pos < len(capability) else 0
    while record != 0 and pos < len(capability):
        if pos + 1 >= len(capability):
            return None
        pos += capability[pos + 1]
        record = capability[pos] if pos < len(capability) else 0
    end = pos + 2 + VERSION_LENGTH + BRANCH_LENGTH
    if record != 0 or end > len(capability):
        return None
    version = capability[pos + 2 : pos + 2 + VERSION_LENGTH].decode("latin-1").strip("\x00")
    branch = capability[pos + 2 + VERSION_LENGTH : end].decode("latin-1").strip("\x00")
    return version, branch


def vgpu_labels(configs: Sequence[bytes] | None) -> tuple[dict[str, str], list[str]]:
    """Labels from the configuration spaces of the NVIDIA PCI devices (None: they could not be listed);
    with the reason when none are emitted."""
    if configs is None:
        return {}, ["vGPU labels skipped: the PCI devices could not be listed"]
    vgpus: list[bytes] = []
    for config in configs:
        try:
            capability = vendor_capability(config)
        except ConfigSpaceError as err:
            return {}, [f"vGPU labels skipped: {err}"]
        if capability is not None and is_vgpu(capability):
            vgpus.append(capability)
    labels = {"nvidia.com/vgpu.present": "true" if vgpus else "false"}
    for capability in vgpus:
        info = host_driver(capability)
        if info is None:
            return {}, ["vGPU labels skipped: no host driver record in the vGPU capability"]
        labels["nvidia.com/vgpu.host-driver-version"], labels["nvidia.com/vgpu.host-driver-branch"] = info
    return labels, []
