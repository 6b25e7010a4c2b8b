"""Series identity: which entities a snapshot has (GPUs, or MIG instances) and their label strings.

dcgm-exporter's label layout, in its order: gpu, UUID, pci_bus_id, device (``nvidia<gpu index>``, as
its collectors write it), modelName, then GPU_I_PROFILE and GPU_I_ID for MIG instances, Hostname, the
label-type fields (DCGM_FI_DRIVER_VERSION ...), then pod, namespace, container when the entity is
attributed to a pod. A MIG instance carries its parent's UUID, as in dcgm-exporter; GPU_I_ID tells the
instances apart. Series are per GPU instance, as dcgm-exporter's (it watches DCGM's GPU-instance entities):
a GPU instance split into compute instances (``1c.3g.40gb`` ...) is one entity whose GPU_I_PROFILE is the
GPU-instance profile (``3g.40gb``); dcgm-exporter has no compute-instance label. Released dcgm-exporter
(4.x) writes ``Hostname``; its main branch renamed it to ``hostname``: the label name is a setting
(``metrics.hostname_label``), the released one by default.

Like dcgm-exporter's default ("flex") mode, a GPU with MIG enabled and instances present is exposed
through its instances only; a GPU without instances is exposed as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nodeagent.metrics.fields import Counter, Kind
from nodeagent.model.gpu import GpuInfo, Inventory, MigDevice, MigKey
from nodeagent.model.mig_names import gpu_instance_name

HOSTNAME_LABELS = ("Hostname", "hostname")


class MigWholeGpu:
    """Where whole-GPU fields (power, temperatures, clocks, energy) go on a GPU exposed through its instances."""

    EVERY_INSTANCE = "every-instance"
    """dcgm-exporter's behaviour: every instance series repeats its GPU's value (sum() counts it N times)."""
    FIRST_INSTANCE = "first-instance"
    """Only the GPU's first instance (lowest GPU_I_ID) carries them: sums over a node are right."""
    CHOICES = (EVERY_INSTANCE, FIRST_INSTANCE)


MAX_LABELS = 19
"""Fewer than 20 labels on any series."""

EntityKey = int | MigKey
"""A GPU index, or (GPU index, GPU-instance id) for a MIG instance."""


@dataclass(frozen=True)
class PodRef:
    pod: str
    namespace: str
    container: str


@dataclass(frozen=True)
class Entity:
    gpu: GpuInfo
    mig: MigDevice | None
    pairs: tuple[tuple[str, str], ...]
    labels: str
    """``pairs`` rendered without braces, e.g. ``gpu="0",UUID="GPU-..."``."""
    whole_gpu: bool = True
    """Whether whole-GPU (device-scope) values are emitted on this entity's series."""

    @property
    def key(self) -> EntityKey:
        return (self.gpu.index, self.mig.gpu_instance_id) if self.mig else self.gpu.index


def escape(value: str) -> str:
    """Label value escaping, the same in the text format and OpenMetrics."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def entities(
    inventory: Inventory,
    counters: Sequence[Counter],
    *,
    hostname: str,
    pods: Mapping[EntityKey, PodRef],
    hostname_label: str = HOSTNAME_LABELS[0],
    mig_whole_gpu: str = MigWholeGpu.EVERY_INSTANCE,
) -> tuple[Entity, ...]:
    """The entities series are exposed for: each GPU, or each MIG instance of a GPU that has them."""
    labels = _Labels(inventory, counters, hostname, pods, hostname_label)
    out: list[Entity] = []
    for gpu in sorted(inventory.gpus, key=lambda g: g.index):
        migs = _per_gpu_instance(gpu.mig_devices) if gpu.mig_enabled else []
        instances: Sequence[MigDevice | None] = migs or [None]
        for position, mig in enumerate(instances):
            whole_gpu = mig is None or position == 0 or mig_whole_gpu == MigWholeGpu.EVERY_INSTANCE
            out.append(labels.entity(gpu, mig, whole_gpu))
    return tuple(out)


def gpu_entities(
    inventory: Inventory,
    counters: Sequence[Counter],
    *,
    hostname: str,
    pods: Mapping[EntityKey, PodRef],
    hostname_label: str = HOSTNAME_LABELS[0],
) -> tuple[Entity, ...]:
    """One entity per physical GPU, MIG or not (per-GPU series such as DCGM_EXP_GPU_HEALTH_STATUS, whose
    DCGM health group holds GPUs only), labelled by the same builder as every other series."""
    labels = _Labels(inventory, counters, hostname, pods, hostname_label)
    return tuple(labels.entity(gpu, None, True) for gpu in sorted(inventory.gpus, key=lambda g: g.index))


class _Labels:
    """The one label builder of every series, in dcgm-exporter's order (see the module docstring)."""

    def __init__(
        self,
        inventory: Inventory,
        counters: Sequence[Counter],
        hostname: str,
        pods: Mapping[EntityKey, PodRef],
        hostname_label: str,
    ) -> None:
        self.inventory = inventory
        self.label_fields = [c for c in counters if c.kind is Kind.LABEL]
        self.hostname = hostname
        self.pods = pods
        self.hostname_label = hostname_label

    def entity(self, gpu: GpuInfo, mig: MigDevice | None, whole_gpu: bool) -> Entity:
        pairs = [
            ("gpu", str(gpu.index)),
            ("UUID", gpu.uuid),
            ("pci_bus_id", gpu.pci_bus_id),
            ("device", gpu.device_name),
            ("modelName", gpu.name),
        ]
        if mig is not None:
            pairs += [("GPU_I_PROFILE", gpu_instance_name(mig.profile)), ("GPU_I_ID", str(mig.gpu_instance_id))]
        pairs.append((self.hostname_label, self.hostname))
        for c in self.label_fields:
            assert c.spec.static is not None
            pairs.append((c.name, c.spec.static(self.inventory, gpu)))
        key: EntityKey = gpu.index if mig is None else (gpu.index, mig.gpu_instance_id)
        # A MIG instance without its own pod belongs to the pod holding the whole GPU, if any.
        ref = self.pods.get(key) or (self.pods.get(gpu.index) if mig else None)
        if ref is not None:
            pairs += [("pod", ref.pod), ("namespace", ref.namespace), ("container", ref.container)]
        if len(pairs) > MAX_LABELS:
            raise ValueError(f"{len(pairs)} labels on a series; at most {MAX_LABELS} are allowed")
        labels = ",".join(f'{k}="{escape(v)}"' for k, v in pairs)
        return Entity(gpu, mig, tuple(pairs), labels, whole_gpu)


def _per_gpu_instance(devices: Sequence[MigDevice]) -> list[MigDevice]:
    """One device per GPU instance (its first compute instance), by GPU-instance id: dcgm-exporter watches
    GPU instances (DCGM's GPU_I entities), so a GPU instance holding several compute instances is one
    entity, labelled with its GPU-instance profile; it has no compute-instance label."""
    first: dict[int, MigDevice] = {}
    for d in sorted(devices, key=lambda d: (d.gpu_instance_id, d.compute_instance_id)):
        first.setdefault(d.gpu_instance_id, d)
    return [first[gi] for gi in sorted(first)]
