"""Dynamic MIG through partitionable devices (KEP-4815, ``resource.k8s.io/v1`` ``sharedCounters`` /
``consumesCounters``; pure, no I/O): a MIG-enabled GPU is published as one counter set and one device per
possible placement of every profile, so the scheduler itself picks a placement that fits beside the others,
and NodePrepareResources creates that GPU instance (``dra.dynamic_mig``).

- The counter set ``gpu-<minor>-counters``: ``memory-slice-<i>`` (1 each, one per memory slice of the
  model's MIG table), ``compute-slices`` (the GPU's compute slices) and, when a profile has media extensions,
  ``media-extensions`` (1: one ``+me`` instance at a time).
- A placement device (``devices.placement_name``: ``gpu-0-mig-3g40gb-9-4`` is 3g.40gb, profile id 9, at memory
  slice 4) consumes the memory slices it occupies, its compute slices and, for ``+me``, the media extension:
  two placements that overlap can never both be allocated. Its attributes are a static MIG device's (type
  ``mig``, ``profile``, ``parentUUID``, ``productName``, ...) without ``uuid``, which the instance only gets
  when it is created; its capacities are the profile's.
- Instances in use that no claim of this plugin made (static MIG, mig-parted, someone with nvidia-smi) stay
  published as static MIG devices (``devices.mig_device``, no counters); every placement they rule out
  (overlap, profile count, compute slices: ``model.mig.placement_problem``) is left out and the compute and
  media counters are lowered by what they hold. An instance a claim made stays its placement device: the
  scheduler counts it consumed through that claim's allocation.
- No whole ``gpu-<minor>`` device for a MIG-enabled GPU: in MIG mode CUDA sees no GPU outside an instance (the
  full-GPU profile, ``7g.80gb`` on an H100, is the whole GPU's placement).
- A model without a MIG table falls back to static MIG.

Slices: each counter set goes with all its consumers into one slice (1.34 needs a set in its consumers'
slice; ``kube/resourceslices.py`` packs them within the per-slice limits).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from nodeagent.dra import devices
from nodeagent.dra.devices import PublishedDevice
from nodeagent.errors import NodeAgentError
from nodeagent.model import catalog
from nodeagent.model.gpu import GpuInfo, Inventory, MigDevice, MigProfile
from nodeagent.model.mig import MigTable, placement_problem
from nodeagent.model.mig_names import gpu_instance_name

COMPUTE = "compute-slices"
MEDIA = "media-extensions"


class PlacementTaken(NodeAgentError):
    """The allocated placement cannot be created without disturbing an instance in use."""


def counter_set_name(gpu: GpuInfo) -> str:
    return f"gpu-{gpu.minor_number}-counters"


def memory_slice(i: int) -> str:
    return f"memory-slice-{i}"


@dataclass(frozen=True)
class CounterSet:
    name: str
    counters: Mapping[str, int]

    def api(self) -> dict[str, object]:
        """As ``sharedCounters`` lists it."""
        return {"name": self.name, "counters": {k: {"value": str(v)} for k, v in sorted(self.counters.items())}}


@dataclass(frozen=True)
class Publication:
    devices: tuple[PublishedDevice, ...]
    counter_sets: tuple[CounterSet, ...] = ()


@dataclass(frozen=True)
class InUse:
    """An existing GPU instance: its profile, start, id, UUID (of its first compute instance)."""

    profile: MigProfile
    start: int
    gpu_instance_id: int
    uuid: str


def table_of(gpu: GpuInfo, inventory: Inventory) -> MigTable | None:
    """The MIG table of ``gpu``'s model (the backend's profiles, else the catalog's); None when unknown."""
    profiles = inventory.mig_profiles.get(gpu.name) or catalog.known_mig_profiles(gpu.name) or ()
    return MigTable.from_profiles(profiles) if profiles else None


def instances(gpu: GpuInfo, table: MigTable) -> tuple[InUse, ...]:
    """The GPU instances on ``gpu`` (one per GPU instance, whatever its compute instances), by start."""
    by_gi: dict[int, MigDevice] = {}
    for m in sorted(gpu.mig_devices, key=lambda m: (m.gpu_instance_id, m.compute_start, m.compute_instance_id)):
        by_gi.setdefault(m.gpu_instance_id, m)
    found = []
    for gi, m in by_gi.items():
        p = table.profile(gpu_instance_name(m.profile))
        if p is not None:
            found.append(InUse(p, m.placement_start, gi, m.uuid))
    return tuple(sorted(found, key=lambda i: (i.start, i.gpu_instance_id)))


def counters(table: MigTable) -> dict[str, int]:
    found = {memory_slice(i): 1 for i in range(table.memory_slices)}
    found[COMPUTE] = table.compute_slices
    if any(p.media_extensions for p in table.profiles):
        found[MEDIA] = 1
    return found


def consumption(profile: MigProfile, start: int) -> dict[str, int]:
    """The counters a placement consumes."""
    found = {memory_slice(i): 1 for i in range(start, start + profile.slices)}
    found[COMPUTE] = profile.compute_slices
    if profile.media_extensions:
        found[MEDIA] = 1
    return found


def placements(table: MigTable) -> tuple[tuple[MigProfile, int], ...]:
    """Every (profile, start) the table allows, in the table's order."""
    return tuple((p, s) for p in table.profiles for s in p.starts if s + p.slices <= table.memory_slices)


def _gpu(
    gpu: GpuInfo, inventory: Inventory, table: MigTable, common: Mapping[str, devices.Attribute], owned: Collection[int]
) -> tuple[list[PublishedDevice], CounterSet | None]:
    used = instances(gpu, table)
    mine = {i.start: i for i in used if i.gpu_instance_id in owned}
    others = [i for i in used if i.gpu_instance_id not in owned]
    fixed = [(i.profile, i.start) for i in others]
    set_name = counter_set_name(gpu)
    total = counters(table)
    total[COMPUTE] -= sum(i.profile.compute_slices for i in others)
    if MEDIA in total:
        total[MEDIA] -= sum(1 for i in others if i.profile.media_extensions)
    ids = devices.profile_ids(gpu, inventory)
    capacities = catalog.known_mig_capacities(gpu.name)
    found: list[PublishedDevice] = []
    for p, start in placements(table):
        kw = {"memory_slices": table.memory_slices, "compute_slices": table.compute_slices}
        if placement_problem(p, start, fixed, **kw) is not None:
            continue
        made = mine.get(start) if mine.get(start) and mine[start].profile.name == p.name else None
        found.append(
            PublishedDevice(
                devices.placement_name(gpu, p.name, ids.get(p.name, p.profile_id), start),
                "mig",
                made.uuid if made else "",
                gpu.index,
                devices.mig_attributes(gpu, p.name, common),
                {"memory": p.memory_mib * 1024 * 1024} | capacities.get(p.name, {}),
                made.gpu_instance_id if made else None,
                consumes={set_name: consumption(p, start)},
                placement=(p.name, start),
            )
        )
    statics = [m for m in sorted(gpu.mig_devices, key=lambda m: m.mig_index) if m.gpu_instance_id not in owned]
    found.extend(devices.mig_device(gpu, inventory, m, common) for m in statics)
    has_consumer = any(d.consumes for d in found)
    return found, CounterSet(set_name, total) if has_consumer else None


def plan(
    inventory: Inventory,
    pcie_roots: Mapping[str, str] | None = None,
    owned: Mapping[int, Collection[int]] | None = None,
) -> Publication:
    """``devices.plan`` with every MIG-enabled GPU of a known model published for dynamic MIG. ``owned``: GPU
    index → the GPU instances claims of this plugin made (they stay their placement devices)."""
    roots = pcie_roots or {}
    mine = owned or {}
    found: list[PublishedDevice] = []
    sets: list[CounterSet] = []
    for gpu in sorted(inventory.gpus, key=lambda g: g.index):
        common = devices.common_attributes(gpu, inventory, roots)
        table = table_of(gpu, inventory) if gpu.mig_enabled else None
        if table is None:
            found.extend(devices.plan(replace(inventory, gpus=(gpu,)), roots))
            continue
        gpu_devices, counter_set = _gpu(gpu, inventory, table, common, mine.get(gpu.index, ()))
        found.extend(gpu_devices)
        if counter_set is not None:
            sets.append(counter_set)
    return Publication(tuple(found), tuple(sets))


@dataclass(frozen=True)
class Creation:
    """The GPU instance to create for a placement device, or the one to adopt (already created for it before
    an agent restart lost the record of it)."""

    gpu_index: int
    profile: str
    start: int
    adopt: InUse | None = None


def creation(
    gpu: GpuInfo,
    table: MigTable,
    profile: str,
    start: int,
    *,
    owned: Collection[int],
    device: str,
    may_adopt: bool = False,
) -> Creation:
    """How to make ``device``'s placement (``profile`` at ``start``) on ``gpu`` now: the exact placement rules
    against every instance there (``model.mig.placement_problem``, as the simulator and NVML enforce them).
    With ``may_adopt`` (the checkpoint says the instance was about to be made when the agent stopped), an
    instance of exactly that profile at that start that no claim owns is adopted; anything else in the way
    raises PlacementTaken naming it. Nothing is ever moved or destroyed."""
    p = table.profile(profile)
    if p is None:
        raise PlacementTaken(f"{device}: {gpu.name} has no MIG profile {profile!r}")
    used = instances(gpu, table)
    for i in used:
        if may_adopt and i.gpu_instance_id not in owned and i.start == start and i.profile.name == profile:
            return Creation(gpu.index, profile, start, adopt=i)
    kw = {"memory_slices": table.memory_slices, "compute_slices": table.compute_slices}
    problem = placement_problem(p, start, [(i.profile, i.start) for i in used], **kw)
    if problem is not None:
        raise PlacementTaken(f"{device}: placement taken on GPU {gpu.index}: {problem}")
    return Creation(gpu.index, profile, start)
