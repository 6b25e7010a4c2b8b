"""The ResourceSlices of one driver on one node (pure): which writes turn the slices in the API server into
the devices the driver publishes now, none when they already list them.

One pool per node (named after the node), its devices split over slices of at most ``MAX_DEVICES`` (the
API's limit: 128, 64 when devices have taints or consume counters), named ``<node>-<driver>-<i>``. When
anything differs the pool's generation is bumped past every slice's, so the scheduler drops the old ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.kube.resources import RESOURCESLICES

MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS = 64


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


def chunks(devices: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    size = _limit(devices)
    return [list(devices[i : i + size]) for i in range(0, len(devices), size)]


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
) -> SliceWrites:
    """The writes that make ``existing`` (this node's and driver's slices as listed) publish ``devices``."""
    by_name = {str(s.get("metadata", {}).get("name", "")): s for s in existing}
    generations = [int(_spec(s).get("pool", {}).get("generation", 0) or 0) for s in existing]
    current = max(generations, default=0)
    parts = chunks(devices)
    wanted = {slice_name(node, driver, i): part for i, part in enumerate(parts)}
    same = set(wanted) == set(by_name) and all(
        _spec(by_name[name]).get("devices", []) == part
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
        upserts.append(
            {
                "apiVersion": RESOURCESLICES.api_version,
                "kind": RESOURCESLICES.kind,
                "metadata": meta,
                "spec": {
                    "driver": driver,
                    "nodeName": node,
                    "pool": {"name": node, "generation": generation, "resourceSliceCount": len(parts)},
                    "devices": [dict(d) for d in part],
                },
            }
        )
    deletes = tuple(sorted(n for n in by_name if n not in wanted))
    return SliceWrites(generation, tuple(upserts), deletes)
