"""Status aggregation for /healthz, /readyz, /status and `nodeagent status`: pure functions of state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan
from nodeagent.subsystem import Status


def health_report(*, ok: bool, heartbeat_age_s: float, loop_lag_s: float) -> dict[str, Any]:
    return {"ok": ok, "heartbeat_age_s": round(heartbeat_age_s, 3), "loop_lag_s": round(loop_lag_s, 6)}


def readiness_text(statuses: Mapping[str, Status], *, ready: bool) -> str:
    lines = ["ready" if ready else "not ready"]
    for name, status in statuses.items():
        reason = f": {status.reason}" if status.reason else ""
        lines.append(f"{name} {status.phase}{reason}")
    return "\n".join(lines) + "\n"


def inventory_json(inventory: Inventory | None) -> dict[str, Any] | None:
    if inventory is None:
        return None
    doc = dataclasses.asdict(inventory)
    doc["mig_profiles"] = {k: [dataclasses.asdict(p) for p in v] for k, v in inventory.mig_profiles.items()}
    for gpu in doc["gpus"]:
        gpu["pci_device_id"] = f"0x{gpu['pci_device_id']:04x}"
        gpu["pci_subsystem_id"] = f"0x{gpu['pci_subsystem_id']:08x}"
        del gpu["links"]  # each GPU's own view; the pairs below say it once
    doc["topology"] = [
        {"gpus": [a, b], "level": link.level.name if link.level is not None else None, "nvlinks": link.nvlinks}
        for (a, b), link in sorted(inventory.topology.pairs.items())
    ]
    return doc


def status_document(
    *,
    inventory: Inventory | None,
    statuses: Mapping[str, Status],
    plans: Mapping[str, Plan],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        **(extra or {}),
        "ready": all(s.ready for s in statuses.values()),
        "inventory": inventory_json(inventory),
        "subsystems": {name: s.to_json() for name, s in statuses.items()},
        "last_plans": {name: p.to_json() for name, p in plans.items()},
    }


def render_status(doc: Mapping[str, Any]) -> str:
    """`nodeagent status` for a person: the GPUs, then each subsystem's phase and reason."""
    out: list[str] = []
    inv = doc.get("inventory")
    if inv:
        out.append(
            f"GPUs ({inv['backend']}, driver {inv['driver_version']}, NVML {inv['nvml_version']}, "
            f"CUDA {inv['cuda_driver_version'] // 1000}.{inv['cuda_driver_version'] % 1000 // 10}):"
        )
        for g in inv["gpus"]:
            mig = " MIG on" if g["mig_enabled"] else (" MIG pending" if g["mig_pending"] else "")
            health = "" if g["health"] == "ok" else f" [{g['health']}: {g['health_reason']}]"
            out.append(
                f"  {g['index']}: {g['name']}  {g['memory_total_mib']} MiB  {g['uuid']}  {g['pci_bus_id']}{mig}{health}"
            )
            out.extend(
                f"      MIG {m['mig_index']}: {m['profile']} (GI {m['gpu_instance_id']}, CI "
                f"{m['compute_instance_id']})  {m['uuid']}"
                for m in g["mig_devices"]
            )
    else:
        out.append("GPUs: none found")
    out.append("Subsystems:")
    for name, s in doc.get("subsystems", {}).items():
        reason = f": {s['reason']}" if s.get("reason") else ""
        out.append(f"  {name:<8} {s['phase']}{reason}")
    return "\n".join(out) + "\n"
