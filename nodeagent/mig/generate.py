"""``mig generate-config`` and ``mig export`` as nvidia-mig-parted 0.15 writes them. Pure.

generate-config (mig-parted ``pkg/mig/builder``): ``all-disabled``, ``all-enabled`` (MIG on, no instances),
``all-<profile>`` for every profile (``+`` written ``.`` in the name) at its maximum count, and
``all-balanced`` (2x1g + 1x2g + 1x3g on 7-slice GPUs, 2x1g + 1x2g on 4-slice ones, from the base profiles
with the highest maximum count). With more than one GPU model, entries carry device filters.

export (mig-parted ``cmd/nvidia-mig-parted/export``): one config, ``current`` by default, with one entry per
distinct layout; entries are merged across GPUs and written ``devices: all`` / without a filter where they
cover every GPU (of a model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nodeagent.mig.config import VERSION, GpuIdentity, render
from nodeagent.mig.planner import GpuMigLayout
from nodeagent.model.gpu import MigProfile

BALANCED = {7: {1: 2, 2: 1, 3: 1}, 4: {1: 2, 2: 1}}
"""Total compute slots → {G: count}, as mig-parted's balancedFormula."""
_G = re.compile(r"^(\d+)g\.")

Configs = dict[str, list[dict[str, Any]]]


def config_name(profile: str) -> str:
    return "all-" + profile.replace("+", ".")


def _g(profile: MigProfile) -> int:
    m = _G.match(profile.name)
    return int(m.group(1)) if m else profile.compute_slices


def _base(profile: MigProfile) -> bool:
    return "+" not in profile.name and "-" not in profile.name


def generate(gpus: Sequence[GpuIdentity]) -> Configs:
    """The configs mig-parted 0.15 generates from these GPUs' profiles, sorted by name as it writes them."""
    by_device: dict[str, tuple[MigProfile, ...]] = {}
    for gpu in gpus:
        if gpu.mig_capable:
            by_device.setdefault(str(gpu.device_id).split(":")[0], gpu.table.profiles)
    heterogeneous = len(by_device) > 1
    configs: Configs = {
        "all-disabled": [{"devices": "all", "mig-enabled": False, "mig-devices": {}}],
        "all-enabled": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}],
    }
    balanced = []
    for device_id in sorted(by_device):
        mig_devices = _balanced(by_device[device_id])
        if mig_devices:
            entry: dict[str, Any] = {"devices": "all", "mig-enabled": True, "mig-devices": mig_devices}
            if heterogeneous:
                entry = {"device-filter": [device_id], **entry}
            balanced.append(entry)
    if balanced:
        configs["all-balanced"] = balanced
    groups: dict[str, dict[int, list[str]]] = {}
    for device_id, profiles in by_device.items():
        for p in profiles:
            groups.setdefault(p.name, {}).setdefault(p.max_count, []).append(device_id)
    for name in sorted(groups):
        entries = []
        for count in sorted(groups[name]):
            e: dict[str, Any] = {"devices": "all", "mig-enabled": True, "mig-devices": {name: count}}
            if heterogeneous:
                e = {"device-filter": sorted(groups[name][count]), **e}
            entries.append(e)
        configs[config_name(name)] = entries
    return dict(sorted(configs.items()))


def _balanced(profiles: Sequence[MigProfile]) -> dict[str, int]:
    base = [p for p in profiles if _base(p)]
    total = max((_g(p) for p in base), default=0)
    formula = BALANCED.get(total)
    if formula is None:
        return {}
    chosen: dict[int, MigProfile] = {}
    for p in base:
        g = _g(p)
        if g in formula and (g not in chosen or p.max_count > chosen[g].max_count):
            chosen[g] = p
    if set(chosen) != set(formula):
        return {}
    return dict(sorted((chosen[g].name, n) for g, n in formula.items()))


def export(states: Sequence[GpuMigLayout], label: str = "current") -> Configs:
    """The GPUs' current layout as one config, merged as mig-parted's export does."""
    specs: list[dict[str, Any]] = []
    for s in states:
        enabled = s.gpu.mig_capable and s.mig_enabled
        specs.append(
            {
                "device-filter": [str(s.gpu.device_id).split(":")[0]],
                "devices": [s.index],
                "mig-enabled": enabled,
                "mig-devices": dict(sorted(s.counts().items())) if enabled else {},
            }
        )
    merged: list[dict[str, Any]] = []
    for spec in specs:
        for m in merged:
            if m["mig-enabled"] == spec["mig-enabled"] and m["mig-devices"] == spec["mig-devices"]:
                m["devices"] = sorted(set(m["devices"]) | set(spec["devices"]))
                m["device-filter"] = sorted(set(m["device-filter"]) | set(spec["device-filter"]))
                break
        else:
            merged.append({**spec, "devices": list(spec["devices"]), "device-filter": list(spec["device-filter"])})
    per_filter: dict[str, set[int]] = {}
    for spec in specs:
        per_filter.setdefault(spec["device-filter"][0], set()).update(spec["devices"])
    for m in merged:
        covered: set[int] = set()
        for df in m["device-filter"]:
            covered |= per_filter[df]
        if sorted(covered) == m["devices"]:
            m["devices"] = "all"
        if len(per_filter) == 1 or len(merged) == 1:
            del m["device-filter"]
        elif len(m["device-filter"]) == 1:
            m["device-filter"] = m["device-filter"][0]
    return {label: merged}


def to_text(configs: Mapping[str, Sequence[Mapping[str, Any]]], output_format: str = "yaml") -> str:
    """YAML as mig-parted writes it, or JSON (``--output-format json``)."""
    if output_format == "json":
        return json.dumps({"version": VERSION, "mig-configs": configs}, indent=2) + "\n"
    return render(configs)
