"""The simulator's persisted state: MIG modes, instances (with their UUIDs) and holders in a JSON state file
(``nodeagent.sim-mig-state/v1``), so two commands on one sandbox see the same GPUs, as on a real node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from nodeagent.backends.gpu.sim.base import SimBase
from nodeagent.backends.hostfs import atomic_write
from nodeagent.errors import ConfigError
from nodeagent.model.mig import GpuProcess

log = structlog.get_logger(__name__)

STATE_FORMAT = "nodeagent.sim-mig-state/v1"


class SimPersistence(SimBase):
    def use_state_file(self, path: Path) -> None:
        """Keep the MIG state (modes, instances with their UUIDs, holders) in ``path``: read it now when it
        describes this node (same profile, count and seed), write it after every change. Two separate
        commands on one sandbox then see the same GPUs, as on a real node."""
        self._state_file = path
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._save()
            return
        except (OSError, ValueError) as err:
            log.warning("sim_mig_state_unreadable", path=str(path), error=str(err))
            self._save()
            return
        if not self._load(doc):
            log.warning("sim_mig_state_other_node", path=str(path))
            self._save()

    def _identity(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "profile": self.profile.key, "count": self.count, "seed": self.seed}

    def _load(self, doc: Any) -> bool:
        if not isinstance(doc, dict) or {k: doc.get(k) for k in self._identity()} != self._identity():
            return False
        try:
            for raw in doc["gpus"]:
                g = self._gpu(int(raw["index"]))
                g.mig_enabled, g.mig_pending = bool(raw["mig_enabled"]), bool(raw["mig_pending"])
                g.created = int(raw["created"])
                g.instances.clear()
                for inst in raw["instances"]:
                    compute = [(int(c["slices"]), int(c["start"])) for c in inst.get("compute", [])]
                    uuids = [str(c["uuid"]) for c in inst.get("compute", [])]
                    mp = self.profile.mig_profile(inst["profile"])
                    g.add_instance(mp, int(inst["start"]), uuid=inst["uuid"], compute=compute, uuids=uuids)
                g.holders = tuple(
                    GpuProcess(int(h["pid"]), str(h["name"]), g.index, h.get("gpu_instance_id"), int(h.get("mib", 0)))
                    for h in raw.get("holders", [])
                )
        except (KeyError, TypeError, ValueError, IndexError, ConfigError) as err:
            log.warning("sim_mig_state_bad", error=str(err))
            return False
        return True

    def _save(self) -> None:
        if self._state_file is None:
            return
        doc = {
            **self._identity(),
            "gpus": [
                {
                    "index": g.index,
                    "mig_enabled": g.mig_enabled,
                    "mig_pending": g.mig_pending,
                    "created": g.created,
                    "instances": [
                        {
                            "profile": i.profile.name,
                            "start": i.start,
                            "uuid": i.uuid,
                            "compute": [{"slices": c.slices, "start": c.start, "uuid": c.uuid} for c in i.computes],
                        }
                        for i in sorted(g.instances.values(), key=lambda i: i.gi)
                    ],
                    "holders": [
                        {"pid": h.pid, "name": h.name, "gpu_instance_id": h.gpu_instance_id, "mib": h.used_memory_mib}
                        for h in g.holders
                    ],
                }
                for g in self._gpus
            ],
        }
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._state_file, (json.dumps(doc, indent=1) + "\n").encode())
