"""GFD's label set computed from ``NodeFacts``: pure functions, one per GFD labeler.

The structure follows gpu-feature-discovery (k8s-device-plugin ``internal/lm``): each labeler returns a
``Labels`` map and ``merge`` lets a later map override an earlier one, in GFD's order (machine type,
versions, MIG capability, sharing, resources, GPU mode, IMEX; the timestamp first). Where GFD fails the
whole run (a driver version that is not ``X.Y[.Z]``, MPS sharing with MIG enabled) ``LabelingError`` is
raised. After merging, every key and value is checked against the API server's rules; a label that would
be rejected is dropped and reported in ``LabelSet.dropped`` (the subsystem logs it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nodeagent.errors import NodeAgentError
from nodeagent.kube import validation
from nodeagent.labels import vgpu
from nodeagent.labels.facts import (
    GpuFacts,
    MigFacts,
    MigStrategy,
    NodeFacts,
    Sharing,
    SharingStrategy,
)

Labels = dict[str, str]

GPU_RESOURCE = "nvidia.com/gpu"
PCI_VGA_CLASS = 0x030000
PCI_3D_CLASS = 0x030200


class LabelingError(NodeAgentError):
    """The facts do not allow a label set (GFD exits with an error in the same case)."""


@dataclass(frozen=True)
class LabelSet:
    labels: Mapping[str, str]
    dropped: tuple[tuple[str, str, str], ...] = ()
    """(key, value, reason) of labels the API server would reject."""
    warnings: tuple[str, ...] = field(default=())


def merge(*parts: Mapping[str, str]) -> Labels:
    out: Labels = {}
    for part in parts:
        out.update(part)
    return out


def sanitise(text: str) -> str:
    """GFD's sanitise: drop characters outside ``[A-Za-z0-9-_. ]``, join the words with ``-``."""
    return "-".join(re.sub(r"[^A-Za-z0-9\-_. ]", "", text).split())


_FAMILIES = {
    1: "tesla",
    2: "fermi",
    3: "kepler",
    5: "maxwell",
    6: "pascal",
    9: "hopper",
    10: "blackwell",
    12: "blackwell",
    13: "rubin",
}


def arch_family(major: int, minor: int) -> str:
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return _FAMILIES.get(major, "undefined")


def mig_device_name(profile: str) -> str:
    """The name GFD gives a MIG device (and its ``mig-<name>`` resource): ``+`` written ``.``."""
    return profile.replace("+", ".")


# ------------------------------------------------------------------------------------------- labelers


def timestamp_labels(facts: NodeFacts) -> Labels:
    return {} if facts.timestamp is None else {"nvidia.com/gfd.timestamp": str(facts.timestamp)}


def machine_type_labels(facts: NodeFacts) -> Labels:
    machine = facts.machine_type if facts.machine_type is not None else "unknown"
    return {"nvidia.com/gpu.machine": sanitise(machine)}


def version_labels(facts: NodeFacts) -> Labels:
    parts = facts.driver_version.split(".")
    if not 2 <= len(parts) <= 3:
        raise LabelingError(f'driver version "{facts.driver_version}" does not match format "X.Y[.Z]"')
    major, minor = parts[0], parts[1]
    rev = parts[2] if len(parts) > 2 else ""
    cuda_major, cuda_minor = facts.cuda_driver_version // 1000, (facts.cuda_driver_version % 1000) // 10
    return {
        "nvidia.com/cuda.driver.major": major,
        "nvidia.com/cuda.driver.minor": minor,
        "nvidia.com/cuda.driver.rev": rev,
        "nvidia.com/cuda.runtime.major": str(cuda_major),
        "nvidia.com/cuda.runtime.minor": str(cuda_minor),
        "nvidia.com/cuda.driver-version.major": major,
        "nvidia.com/cuda.driver-version.minor": minor,
        "nvidia.com/cuda.driver-version.revision": rev,
        "nvidia.com/cuda.driver-version.full": facts.driver_version,
        "nvidia.com/cuda.runtime-version.major": str(cuda_major),
        "nvidia.com/cuda.runtime-version.minor": str(cuda_minor),
        "nvidia.com/cuda.runtime-version.full": f"{cuda_major}.{cuda_minor}",
    }


def mig_capability_labels(gpus: tuple[GpuFacts, ...]) -> Labels:
    if not gpus:
        return {}
    return {"nvidia.com/mig.capable": _bool(any(g.mig_capable for g in gpus))}


def sharing_labels(gpus: tuple[GpuFacts, ...], sharing: Sharing) -> Labels:
    if sharing.strategy != SharingStrategy.MPS:
        return {"nvidia.com/mps.capable": "false"}
    if any(g.mig_enabled for g in gpus):
        raise LabelingError("MPS sharing is not supported for mig devices")
    return {"nvidia.com/mps.capable": "true"}


def gpu_mode_labels(gpus: tuple[GpuFacts, ...]) -> Labels:
    classes = {g.pci_class for g in gpus}
    if None in classes or len(classes) != 1:
        return {"nvidia.com/gpu.mode": "unknown"}
    mode = {PCI_VGA_CLASS: "graphics", PCI_3D_CLASS: "compute"}.get(classes.pop() or 0, "unknown")
    return {"nvidia.com/gpu.mode": mode}


def imex_labels(gpus: tuple[GpuFacts, ...]) -> Labels:
    attached = [g.fabric for g in gpus if g.fabric is not None]
    clusters = {f[0] for f in attached}
    cliques = {f[1] for f in attached}
    if len(clusters) != 1 or len(cliques) != 1:
        return {}
    cluster, clique = clusters.pop(), cliques.pop()
    if not cluster or not clique:
        return {}
    return {"nvidia.com/gpu.clique": f"{cluster}.{clique}"}


# ------------------------------------------------------------------------------------ resource labels


@dataclass(frozen=True)
class _Resource:
    """GFD's resourceLabeler: ``sharing`` None means sharing is disabled for this resource."""

    name: str
    sharing: Sharing | None

    def key(self, suffix: str) -> str:
        return f"{self.name}.{suffix}"

    def _replication(self) -> tuple[int, bool] | None:
        if self.sharing is None:
            return None
        r = self.sharing.resources.get(self.name) or self.sharing.every
        return None if r is None else (r.replicas, r.renamed)

    def replicas(self) -> int:
        if self.sharing is None:
            return 0
        r = self._replication()
        return r[0] if r is not None and r[0] > 0 else 1

    def product(self, *parts: str) -> str:
        words = [sanitise(p) for p in parts if p]
        if not words:
            return ""
        r = self._replication()
        if r is not None and r[0] > 1 and not r[1]:
            words.append("SHARED")
        return "-".join(words)

    def base(self, count: int, *parts: str) -> Labels:
        replicas = self.replicas()
        strategy = SharingStrategy.NONE
        if self.sharing is not None and replicas > 1:
            strategy = self.sharing.strategy
        return {
            self.key("product"): self.product(*parts),
            self.key("count"): str(count),
            self.key("replicas"): str(replicas),
            self.key("sharing-strategy"): str(strategy),
        }


def _full_gpu_labels(resource: _Resource, gpu: GpuFacts, count: int) -> Labels:
    labels = resource.base(count, gpu.name)
    if gpu.memory_mib:
        labels[resource.key("memory")] = str(gpu.memory_mib)
    major, minor = gpu.compute_capability
    if major:
        labels[resource.key("family")] = arch_family(major, minor)
        labels[resource.key("compute.major")] = str(major)
        labels[resource.key("compute.minor")] = str(minor)
    return labels


def _mig_resource_labels(resource: _Resource, parent: GpuFacts, mig: MigFacts, count: int) -> Labels:
    labels = resource.base(count, parent.name, "MIG", mig_device_name(mig.profile))
    for suffix, value in mig.attributes.items():
        if value is not None:
            labels[resource.key(suffix)] = str(value)
    return labels


def full_gpu_labels(gpus: tuple[GpuFacts, ...], sharing: Sharing) -> Labels:
    """newGPULabelers: one label family per GPU model; full GPUs override MIG-enabled ones of that model."""
    counts: dict[str, int] = {}
    mig_enabled: dict[str, GpuFacts] = {}
    full: dict[str, GpuFacts] = {}
    for gpu in gpus:
        (mig_enabled if gpu.mig_enabled else full)[gpu.name] = gpu
        counts[gpu.name] = counts.get(gpu.name, 0) + 1
    out: Labels = {}
    for name, gpu in mig_enabled.items():
        out.update(_full_gpu_labels(_Resource(GPU_RESOURCE, None), gpu, counts[name]))
    for name, gpu in full.items():
        out.update(_full_gpu_labels(_Resource(GPU_RESOURCE, sharing), gpu, counts[name]))
    return out


def _invalid_single(first_mig_enabled: GpuFacts) -> Labels:
    r = _Resource(GPU_RESOURCE, None)
    return {
        r.key("product"): r.product(first_mig_enabled.name, "MIG", "INVALID"),
        r.key("count"): "0",
        r.key("replicas"): "0",
        r.key("sharing-strategy"): "",
        r.key("memory"): "0",
    }


def _group_migs(gpus: Iterable[GpuFacts]) -> dict[str, tuple[GpuFacts, MigFacts, int]]:
    """MIG device name → (parent of the first one, the first one, count)."""
    groups: dict[str, tuple[GpuFacts, MigFacts, int]] = {}
    for gpu in gpus:
        if not gpu.mig_enabled:
            continue
        for mig in gpu.migs:
            name = mig_device_name(mig.profile)
            parent, first, count = groups.get(name, (gpu, mig, 0))
            groups[name] = (parent, first, count + 1)
    return groups


def single_strategy_labels(gpus: tuple[GpuFacts, ...], sharing: Sharing) -> tuple[Labels, list[str]]:
    enabled = [g for g in gpus if g.mig_enabled]
    if not enabled:
        return {}, []
    if any(not g.migs for g in enabled):
        reason = "at least one MIG device is enabled but empty"
        return _invalid_single(enabled[0]), [f"invalid configuration for mig-strategy=single: {reason}"]
    if len(enabled) != len(gpus):
        reason = "devices with MIG enabled and disable detected"
        return _invalid_single(enabled[0]), [f"invalid configuration for mig-strategy=single: {reason}"]
    groups = _group_migs(gpus)
    if len(groups) != 1:
        reason = "more than one MIG device type present on node"
        return _invalid_single(enabled[0]), [f"invalid configuration for mig-strategy=single: {reason}"]
    ((parent, mig, count),) = groups.values()
    return _mig_resource_labels(_Resource(GPU_RESOURCE, sharing), parent, mig, count), []


def mixed_strategy_labels(gpus: tuple[GpuFacts, ...], sharing: Sharing) -> Labels:
    out: Labels = {}
    for name, (parent, mig, count) in _group_migs(gpus).items():
        out.update(_mig_resource_labels(_Resource(f"nvidia.com/mig-{name}", sharing), parent, mig, count))
    return out


def resource_labels(facts: NodeFacts) -> tuple[Labels, list[str]]:
    if not facts.gpus:
        return {}, []
    labels = full_gpu_labels(facts.gpus, facts.sharing)
    if facts.mig_strategy == MigStrategy.NONE:
        return labels, []
    strategy = {"nvidia.com/mig.strategy": str(facts.mig_strategy)}
    if facts.mig_strategy == MigStrategy.SINGLE:
        mig, warnings = single_strategy_labels(facts.gpus, facts.sharing)
        return merge(labels, strategy, mig), warnings
    return merge(labels, strategy, mixed_strategy_labels(facts.gpus, facts.sharing)), []


# -------------------------------------------------------------------------------------------- the set


def device_labels(facts: NodeFacts) -> tuple[Labels, list[str]]:
    """NewDeviceLabeler: empty without GPUs."""
    if not facts.gpus:
        return {}, []
    resources, warnings = resource_labels(facts)
    labels = merge(
        machine_type_labels(facts),
        version_labels(facts),
        mig_capability_labels(facts.gpus),
        sharing_labels(facts.gpus, facts.sharing),
        resources,
        gpu_mode_labels(facts.gpus),
        imex_labels(facts.gpus),
    )
    return labels, warnings


def compute(facts: NodeFacts, *, gpu_present: bool = True) -> LabelSet:
    """GFD's full label set for ``facts``, plus ``nvidia.com/gpu.present=true`` (the GPU Operator's
    gating label) when GPUs exist and ``gpu_present`` is set; invalid labels dropped with their reason."""
    devices, warnings = device_labels(facts)
    vgpus, vgpu_warnings = vgpu.vgpu_labels(facts.pci_configs)
    warnings += vgpu_warnings
    labels = merge(timestamp_labels(facts), devices, vgpus)
    if gpu_present and facts.gpus:
        labels["nvidia.com/gpu.present"] = "true"
    kept: Labels = {}
    dropped: list[tuple[str, str, str]] = []
    for key, value in labels.items():
        problems = [f"key: {p}" for p in validation.key_problems(key)]
        problems += [f"value: {p}" for p in validation.value_problems(value)]
        if problems:
            dropped.append((key, value, "; ".join(problems)))
        else:
            kept[key] = value
    return LabelSet(dict(sorted(kept.items())), tuple(dropped), tuple(warnings))


def _bool(value: bool) -> str:
    return "true" if value else "false"
