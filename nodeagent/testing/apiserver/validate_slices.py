"""ResourceSlice validation as kube-apiserver 1.34 answers it for partitionable devices (KEP-4815,
``pkg/apis/resource/validation``): at most 128 devices; at most 32 counters over all ``sharedCounters`` sets
(names DNS labels, unique, none empty); per device at most 32 counters consumed, one entry per set, every set
and counter it names defined in the same slice; at most 1024 counters consumed over the slice's devices."""

from __future__ import annotations

from typing import Any

from nodeagent.kube import validation

MAX_DEVICES = 128
MAX_SHARED_COUNTERS = 32
MAX_COUNTERS_PER_DEVICE = 32
MAX_DEVICE_COUNTERS = 1024


def _label(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 63 and "." not in name and validation.is_dns1123_subdomain(name)


def slice_problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each rule ``obj`` breaks."""
    spec = obj.get("spec") or {}
    causes: list[tuple[str, str]] = []
    devices = spec.get("devices") or []
    if len(devices) > MAX_DEVICES:
        causes.append(("spec.devices", f"Too many: {len(devices)}: must have at most {MAX_DEVICES} items"))
    sets: dict[str, set[str]] = {}
    total = 0
    for i, cs in enumerate(spec.get("sharedCounters") or []):
        where = f"spec.sharedCounters[{i}]"
        name = cs.get("name")
        counters = cs.get("counters") or {}
        if not _label(name):
            causes.append((f"{where}.name", f'Invalid value: "{name}": must be a DNS label'))
        elif name in sets:
            causes.append((f"{where}.name", f'Duplicate value: "{name}"'))
        if not counters:
            causes.append((f"{where}.counters", "Required value"))
        bad = [c for c in counters if not _label(c)]
        causes.extend((f"{where}.counters", f'Invalid value: "{c}": must be a DNS label') for c in bad)
        sets[str(name)] = set(counters)
        total += len(counters)
    if total > MAX_SHARED_COUNTERS:
        causes.append(
            ("spec.sharedCounters", f"Invalid value: {total}: the total number of shared counters must not exceed 32")
        )
    consumed = 0
    for i, d in enumerate(devices):
        entries = d.get("consumesCounters") or []
        mine = sum(len(e.get("counters") or {}) for e in entries)
        consumed += mine
        if mine > MAX_COUNTERS_PER_DEVICE:
            too_many = f"Invalid value: {mine}: the total number of counters must not exceed 32"
            causes.append((f"spec.devices[{i}]", too_many))
        seen: set[str] = set()
        for j, e in enumerate(entries):
            where = f"spec.devices[{i}].consumesCounters[{j}]"
            name = str(e.get("counterSet", ""))
            if name in seen:
                causes.append((f"{where}.counterSet", f'Duplicate value: "{name}"'))
            seen.add(name)
            if name not in sets:
                causes.append(
                    (
                        f"{where}.counterSet",
                        f'Invalid value: "{name}": must reference a counterSet defined in the ResourceSlice '
                        "sharedCounters",
                    )
                )
                continue
            causes.extend(
                (
                    f"{where}.counters",
                    f'Invalid value: "{c}": must reference a counter defined in the ResourceSlice sharedCounters',
                )
                for c in e.get("counters") or {}
                if c not in sets[name]
            )
    if consumed > MAX_DEVICE_COUNTERS:
        causes.append(
            ("spec.devices", f"Invalid value: {consumed}: the total number of counters in devices must not exceed 1024")
        )
    return causes
