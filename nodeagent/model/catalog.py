"""Known GPU models: the built-in model files (JSON under gpu_models/), read-only data.

Each file describes one GPU model as a real node reports it (name, PCI ids, memory, the MIG profiles with
their placements, which readings NVML answers NotSupported). The simulator builds its GPUs from them, and
the NVML backend takes MIG placements from them when the driver will not list them (MIG mode off).
h100-80gb-hbm3 is built from a real capture; the others from public specifications.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from nodeagent.model.gpu import MigProfile

_PACKAGE = "nodeagent.model"
_FOLDER = "gpu_models"


def builtin_keys() -> list[str]:
    """Keys of the built-in GPU models (file names without .json)."""
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def builtin_text(key: str) -> str:
    """The JSON text of one built-in model; FileNotFoundError for an unknown key."""
    return resources.files(_PACKAGE).joinpath(f"{_FOLDER}/{key}.json").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _mig_tables() -> dict[str, tuple[MigProfile, ...]]:
    tables: dict[str, tuple[MigProfile, ...]] = {}
    for key in builtin_keys():
        doc: Any = json.loads(builtin_text(key))
        name = doc.get("gpu", {}).get("name", "")
        mig = doc.get("mig") or {}
        tables[name] = tuple(
            MigProfile(
                name=p["name"],
                profile_id=int(p["id"]),
                slices=int(p["slices"]),
                starts=tuple(int(s) for s in p["starts"]),
                memory_mib=int(p["memory_mib"]),
                compute_slices=int(p["compute_slices"]),
                max_count=int(p["max_count"]),
                media_extensions=bool(p.get("media_extensions", False)),
            )
            for p in mig.get("profiles", [])
        )
    return tables


def known_mig_profiles(gpu_name: str) -> tuple[MigProfile, ...] | None:
    """The GPU-instance profiles of a known model by its NVML name, or None for an unknown model."""
    return _mig_tables().get(gpu_name)


_ENGINE_CAPACITY = {
    "copy": "copyEngines",
    "decoder": "decoders",
    "encoder": "encoders",
    "jpeg": "jpegEngines",
    "ofa": "ofaEngines",
}
"""Engine counts of a profile under the names NVIDIA's DRA driver gives them as device capacities."""


@functools.lru_cache(maxsize=1)
def _mig_capacities() -> dict[str, dict[str, dict[str, int]]]:
    tables: dict[str, dict[str, dict[str, int]]] = {}
    for key in builtin_keys():
        doc: Any = json.loads(builtin_text(key))
        per_profile: dict[str, dict[str, int]] = {}
        for p in (doc.get("mig") or {}).get("profiles", []):
            found = {"multiprocessors": int(p["multiprocessors"])} if "multiprocessors" in p else {}
            engines = p.get("engines") or {}
            found |= {name: int(engines[e]) for e, name in _ENGINE_CAPACITY.items() if e in engines}
            per_profile[p["name"]] = found
        tables[doc.get("gpu", {}).get("name", "")] = per_profile
    return tables


def known_mig_capacities(gpu_name: str) -> dict[str, dict[str, int]]:
    """Per GPU-instance profile of a known model: its multiprocessors and engines (``copyEngines``, ``decoders``,
    ``encoders``, ``jpegEngines``, ``ofaEngines``); empty for an unknown model."""
    return _mig_capacities().get(gpu_name, {})
