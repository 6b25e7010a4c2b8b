"""Build the labelers' ``NodeFacts`` from the agent's ``Inventory``.

The MIG attributes NVML reports per MIG device (multiprocessors, shared engines) are not part of
``model.gpu.MigProfile``; they come from the built-in GPU model files (the same table the simulator uses).
Slice counts follow from the profile: the GPU instance's compute slices, and the compute instance's
(``1c.3g.40gb``: 3 and 1; a GPU-instance name: one compute instance spanning it). Pure apart from reading
the packaged model files.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

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
from nodeagent.model import catalog
from nodeagent.model.gpu import GpuInfo, Inventory, MigDevice
from nodeagent.model.mig_names import ProfileName


@functools.lru_cache(maxsize=1)
def _catalog_attributes() -> dict[tuple[str, str], dict[str, Any]]:
    """(GPU name, profile name) → {compute_slices, multiprocessors, engines} from the model files."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for key in catalog.builtin_keys():
        doc: Any = json.loads(catalog.builtin_text(key))
        gpu_name = doc.get("gpu", {}).get("name", "")
        for profile in (doc.get("mig") or {}).get("profiles", []):
            table[(gpu_name, profile["name"])] = profile
    return table


def mig_attributes(gpu: GpuInfo, mig: MigDevice, inventory: Inventory) -> MigAttributes:
    """GFD's MIG attributes of one MIG device (NVML's device attributes): ``slices.gi`` the GPU instance's
    compute slices, ``slices.ci`` its compute instance's (fewer for ``1c.3g.40gb``), ``multiprocessors`` the
    compute instance's, engines the GPU instance's (they are shared by its compute instances)."""
    try:
        parsed: ProfileName | None = ProfileName.parse(mig.profile)
    except ValueError:
        parsed = None
    gi_name = parsed.gpu_instance if parsed is not None else mig.profile
    known = _catalog_attributes().get((gpu.name, gi_name), {})
    slices: int | None = known.get("compute_slices")
    if slices is None:
        for profile in inventory.mig_profiles.get(gpu.name, ()):
            if profile.name == gi_name:
                slices = profile.compute_slices
    if slices is None and parsed is not None:
        slices = parsed.gpu
    ci_slices = slices
    multiprocessors = known.get("multiprocessors")
    if parsed is not None and parsed.is_compute_instance:
        ci_slices = parsed.compute
        multiprocessors = _compute_multiprocessors(gpu.name, parsed.compute)
    engines: Mapping[str, int] = known.get("engines", {})
    return MigAttributes(
        memory_mb=mig.memory_total_mib,
        slices_gi=slices,
        slices_ci=ci_slices,
        multiprocessors=multiprocessors,
        engines_copy=engines.get("copy"),
        engines_decoder=engines.get("decoder"),
        engines_encoder=engines.get("encoder"),
        engines_jpeg=engines.get("jpeg"),
        engines_ofa=engines.get("ofa"),
    )


def _compute_multiprocessors(gpu_name: str, compute_slices: int) -> int | None:
    """SMs of a compute instance of ``compute_slices`` slices: those of the model's GPU-instance profile with
    as many compute slices (NVML's compute-instance profiles carry the same SM counts); None when unknown."""
    for (name, _), profile in _catalog_attributes().items():
        if name == gpu_name and profile.get("compute_slices") == compute_slices and "multiprocessors" in profile:
            return int(profile["multiprocessors"])
    return None


def gpu_facts(gpu: GpuInfo, inventory: Inventory, pci_class: int | None) -> GpuFacts:
    migs = tuple(
        MigFacts(m.profile, mig_attributes(gpu, m, inventory))
        for m in sorted(gpu.mig_devices, key=lambda m: m.mig_index)
    )
    return GpuFacts(
        name=gpu.name,
        compute_capability=gpu.compute_capability,
        memory_mib=gpu.memory_total_mib,
        mig_capable=gpu.mig_capable,
        mig_enabled=gpu.mig_enabled,
        pci_class=pci_class,
        migs=migs,
    )


def node_facts(
    inventory: Inventory,
    *,
    pci_classes: Mapping[int, int | None],
    machine_type: str | None,
    mig_strategy: MigStrategy,
    sharing: Sharing,
    timestamp: int | None,
    pci_configs: tuple[bytes, ...] | None = None,
) -> NodeFacts:
    """``pci_classes``: GPU index → PCI class read from sysfs (missing or None: unreadable)."""
    gpus = tuple(
        gpu_facts(g, inventory, pci_classes.get(g.index)) for g in sorted(inventory.gpus, key=lambda g: g.index)
    )
    return NodeFacts(
        gpus=gpus,
        driver_version=inventory.driver_version,
        cuda_driver_version=inventory.cuda_driver_version,
        machine_type=machine_type,
        mig_strategy=mig_strategy,
        sharing=sharing,
        timestamp=timestamp,
        pci_configs=pci_configs,
    )


def plugin_sharing(resources: Mapping[str, tuple[int, bool]], every: tuple[int, bool] | None) -> Sharing:
    """GFD's sharing facts from the device plugin's time-slicing (resource → (replicas, renamed); ``every``: for
    the resources not named): time-slicing when any resource has more than one replica, else none."""
    shared = any(r > 1 for r, _ in (*resources.values(), *([every] if every else [])))
    if not shared:
        return Sharing()
    return Sharing(
        SharingStrategy.TIME_SLICING,
        {name: Replication(r, renamed) for name, (r, renamed) in resources.items()},
        Replication(*every) if every else None,
    )
