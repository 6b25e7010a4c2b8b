"""What the labelers read: plain facts about the node's GPUs, independent of where they came from.

GFD reads these through NVML and sysfs; here they are value types so the labelers are pure functions and
table tests can state GFD's own cases (a mock GPU with 300 MiB, a MIG device ``1g.100gb``) directly.
``nodeagent.labels.inputs`` builds them from the agent's ``Inventory``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class MigStrategy(StrEnum):
    NONE = "none"
    SINGLE = "single"
    MIXED = "mixed"


class SharingStrategy(StrEnum):
    NONE = "none"
    TIME_SLICING = "time-slicing"
    MPS = "mps"


@dataclass(frozen=True)
class Replication:
    """One replicated resource of the device plugin's sharing config."""

    replicas: int
    renamed: bool = False
    """The plugin config renames the shared resource (then no ``-SHARED`` suffix on the product)."""


@dataclass(frozen=True)
class Sharing:
    """The device plugin's sharing config as far as labels need it."""

    strategy: SharingStrategy = SharingStrategy.NONE
    resources: Mapping[str, Replication] = field(default_factory=dict)
    """Resource name (``nvidia.com/gpu``, ``nvidia.com/mig-1g.10gb``) → its replication."""
    every: Replication | None = None
    """The replication of every resource not in ``resources`` (None: those are not replicated)."""


@dataclass(frozen=True)
class MigAttributes:
    """NVML's MIG device attributes (nvmlDeviceGetAttributes); ``None`` where unknown."""

    memory_mb: int
    slices_gi: int | None = None
    slices_ci: int | None = None
    multiprocessors: int | None = None
    engines_copy: int | None = None
    engines_decoder: int | None = None
    engines_encoder: int | None = None
    engines_jpeg: int | None = None
    engines_ofa: int | None = None

    def items(self) -> list[tuple[str, int | None]]:
        """(label suffix, value) in GFD's naming."""
        return [
            ("memory", self.memory_mb),
            ("multiprocessors", self.multiprocessors),
            ("slices.gi", self.slices_gi),
            ("slices.ci", self.slices_ci),
            ("engines.copy", self.engines_copy),
            ("engines.decoder", self.engines_decoder),
            ("engines.encoder", self.engines_encoder),
            ("engines.jpeg", self.engines_jpeg),
            ("engines.ofa", self.engines_ofa),
        ]


@dataclass(frozen=True)
class MigFacts:
    profile: str
    """As NVML names the profile, e.g. ``1g.10gb`` or ``1g.10gb+me``."""
    attributes: MigAttributes


@dataclass(frozen=True)
class GpuFacts:
    name: str
    """NVML device name, e.g. ``NVIDIA H100 80GB HBM3``."""
    compute_capability: tuple[int, int]
    memory_mib: int
    mig_capable: bool = False
    mig_enabled: bool = False
    pci_class: int | None = None
    """24-bit PCI class (0x030200 3D controller, 0x030000 VGA); ``None`` when it could not be read."""
    migs: tuple[MigFacts, ...] = ()
    fabric: tuple[str, str] | None = None
    """(cluster UUID, clique id) for a GPU attached to an NVLink fabric."""


@dataclass(frozen=True)
class NodeFacts:
    """Everything the label set depends on."""

    gpus: tuple[GpuFacts, ...]
    driver_version: str
    """e.g. ``580.159.04``."""
    cuda_driver_version: int
    """As nvmlSystemGetCudaDriverVersion returns it: 13000 is CUDA 13.0."""
    machine_type: str | None = "unknown"
    """DMI product name; ``None`` when it could not be read (GFD then labels ``unknown``)."""
    mig_strategy: MigStrategy = MigStrategy.NONE
    sharing: Sharing = field(default_factory=Sharing)
    timestamp: int | None = None
    """``nvidia.com/gfd.timestamp``: Unix seconds of the agent's start; ``None`` drops the label."""
    pci_configs: tuple[bytes, ...] | None = None
    """PCI configuration space of every NVIDIA PCI device (for the vGPU labels); None: not readable."""
