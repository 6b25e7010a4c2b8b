"""The ResourceSlices of one driver on one node (pure): which writes turn the slices in the API server into
the devices the driver publishes now, none when they already list them.

One pool per node (named after the node), its devices split over slices of at most ``MAX_DEVICES`` (the
API's limit: 128, 64 when devices have taints or consume counters), named ``<node>-<driver>-<i>``. When
anything differs the pool's generation is bumped past every slice's, so the scheduler drops the old ones.

Counter sets (``sharedCounters``, KEP-4815 partitionable devices): in 1.34 a device may only consume counters
of a set in its own slice, so a set and every device consuming it go into one slice, never split; a slice
holds at most ``MAX_SHARED_COUNTERS`` counters over all its sets (the apiserver's validation,
``pkg/apis/resource/validation``). Its other limit, 1024 counters consumed over a slice's devices, follows from
these (each device consumes from one set, at most 64 devices of at most 32 counters' sets, 32 over all sets)
for every slice of more than one set; a single set too big for one slice is left for the apiserver to refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.kube.resources import RESOURCESLICES

MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS = 64
MAX_SHARED_COUNTERS = 32
"""``ResourceSliceMaxSharedCounters``: counters summed over a slice's counter sets."""


@dataclass(frozen=True)
class SliceWrites:
    generation: int
    upserts: tuple[dict[str, Any], ...] = ()
    """Slices to create or replace (a replace carries the existing resourceVersion)."""
    deletes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.deletes


def slice_name(node: str, driver: str, i: int) -> str:
    return f"{node}-{driver}-{i}"


def _limit(devices: Sequence[Mapping[str, Any]]) -> int:
    heavy = any(d.get("taints") or d.get("consumesCounters") for d in devices)
    return MAX_DEVICES_WITH_TAINTS if heavy else MAX_DEVICES


@dataclass(frozen=True)
class SlicePart:
    """What one slice lists: its devices and the counter sets they consume."""

    devices: tuple[Mapping[str, Any], ...]
    counter_sets: tuple[Mapping[str, Any], ...] = ()


def _groups(
    devices: Sequence[Mapping[str, Any]], counter_sets: Sequence[Mapping[str, Any]]
) -> list[tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]]:
    """Devices in order, those consuming one counter set (and the set) kept together where the first of them
    is; a device without counters is a group of its own. ValueError for a set no device names, or a device
    consuming a set not given or more than one set."""
    sets = {str(c["name"]): c for c in counter_sets}
    groups: list[tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]] = []
    at: dict[str, int] = {}
    for d in devices:
        names = {str(c.get("counterSet")) for c in d.get("consumesCounters") or ()}
        if not names:
            groups.append(([d], []))
            continue
        if len(names) > 1 or not names <= set(sets):
            raise ValueError(f"device {d.get('name')} consumes counter sets {sorted(names)}: one of {sorted(sets)}")
        (name,) = names
        if name not in at:
            at[name] = len(groups)
            groups.append(([], [sets[name]]))
        groups[at[name]][0].append(d)
    unused = sorted(set(sets) - set(at))
    if unused:
        raise ValueError(f"counter sets no device consumes: {unused}")
    return groups


def chunks(devices: Sequence[Mapping[str, Any]], counter_sets: Sequence[Mapping[str, Any]] = ()) -> list[SlicePart]:
    """The slices' contents: devices in order, a counter set with all its consumers, within the API's limits."""
    parts: list[SlicePart] = []
    cur_devices: list[Mapping[str, Any]] = []
    cur_sets: list[Mapping[str, Any]] = []
    for group_devices, group_sets in _groups(devices, counter_sets):
        more_devices = cur_devices + group_devices
        more_sets = cur_sets + group_sets
        fits = (
            len(more_devices) <= _limit(more_devices)
            and sum(len(c.get("counters") or {}) for c in more_sets) <= MAX_SHARED_COUNTERS
        )
        if not fits and cur_devices:
            parts.append(SlicePart(tuple(cur_devices), tuple(cur_sets)))
            more_devices, more_sets = list(group_devices), list(group_sets)
        cur_devices, cur_sets = more_devices, more_sets
    if cur_devices:
        parts.append(SlicePart(tuple(cur_devices), tuple(cur_sets)))
    return parts


def _spec(existing: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = existing.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def plan(
    existing: Sequence[Mapping[str, Any]],
    *,
    node: str,
    node_uid: str,
    driver: str,
    devices: Sequence[Mapping[str, Any]],
    counter_sets: Sequence[Mapping[str, Any]] = (),
) -> SliceWrites:
    """The writes that make ``existing`` (this node's and driver's slices as listed) publish ``devices`` and the
    ``counter_sets`` they consume (``sharedCounters`` entries)."""
    by_name = {str(s.get("metadata", {}).get("name", "")): s for s in existing}
    generations = [int(_spec(s).get("pool", {}).get("generation", 0) or 0) for s in existing]
    current = max(generations, default=0)
    parts = chunks(devices, counter_sets)
    wanted = {slice_name(node, driver, i): part for i, part in enumerate(parts)}
    same = set(wanted) == set(by_name) and all(
        _spec(by_name[name]).get("devices", []) == list(part.devices)
        and (_spec(by_name[name]).get("sharedCounters") or []) == list(part.counter_sets)
        and _spec(by_name[name]).get("pool", {}).get("name") == node
        and _spec(by_name[name]).get("pool", {}).get("resourceSliceCount") == len(parts)
        and len(set(generations)) == 1
        for name, part in wanted.items()
    )
    if same:
        return SliceWrites(current)
    generation = current + 1 if existing else 0
    upserts = []
    for name, part in wanted.items():
        meta: dict[str, Any] = {"name": name}
        if node_uid:
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": True}
            ]
        if name in by_name:
            meta["resourceVersion"] = by_name[name].get("metadata", {}).get("resourceVersion", "")
        spec: dict[str, Any] = {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": len(parts)},
            "devices": [dict(d) for d in part.devices],
        }
        if part.counter_sets:
            spec["sharedCounters"] = [dict(c) for c in part.counter_sets]
        upserts.append(
            {"apiVersion": RESOURCESLICES.api_version, "kind": RESOURCESLICES.kind, "metadata": meta, "spec": spec}
        )
    deletes = tuple(sorted(n for n in by_name if n not in wanted))
    return SliceWrites(generation, tuple(upserts), deletes)
