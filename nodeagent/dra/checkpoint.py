"""The DRA plugin's checkpoint (format ``nodeagent.dra-checkpoint/v1``, pure parse and render): every prepared
claim with its devices and CDI device IDs, so a second NodePrepareResources answers the same, Unprepare knows
what to remove, and after an agent restart the per-claim CDI specs (in /var/run, gone after a reboot or
deleted by anyone) are rebuilt. Written atomically through the Root after every change.

A dynamic MIG device (``partitions.py``) also records its GPU instance (``migInstance``: GPU index, profile,
start; the GPU-instance id and UUID once created): written before the instance is created (so a crash in
between adopts it instead of making a second one) and again after, so that Unprepare destroys exactly that
instance and an agent restart neither loses nor duplicates it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodeagent.backends.dra_server import PreparedDevice
from nodeagent.errors import ConfigError

FORMAT = "nodeagent.dra-checkpoint/v1"


@dataclass(frozen=True)
class MigInstance:
    """The GPU instance a claim's dynamic MIG device was given; ``gpu_instance_id`` None: not created yet."""

    gpu_index: int
    profile: str
    start: int
    gpu_instance_id: int | None = None
    uuid: str = ""

    @property
    def created(self) -> bool:
        return self.gpu_instance_id is not None and bool(self.uuid)


@dataclass(frozen=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]
    uuids: Mapping[str, str]
    """Device name → the UUID its CDI edits came from (to rebuild the spec)."""
    instances: Mapping[str, MigInstance] = field(default_factory=dict)
    """Device name → the GPU instance made for it (dynamic MIG devices only)."""

    @property
    def complete(self) -> bool:
        """Every dynamic MIG device has its instance."""
        return all(i.created for i in self.instances.values())


def _instance(i: MigInstance) -> dict[str, Any]:
    doc: dict[str, Any] = {"gpu": i.gpu_index, "profile": i.profile, "start": i.start}
    if i.gpu_instance_id is not None:
        doc["gpuInstanceID"] = i.gpu_instance_id
    if i.uuid:
        doc["uuid"] = i.uuid
    return doc


def render(claims: Mapping[str, PreparedClaim]) -> bytes:
    doc = {
        "format": FORMAT,
        "claims": {
            uid: {
                "namespace": c.namespace,
                "name": c.name,
                "devices": [
                    {
                        "device": d.device,
                        "pool": d.pool,
                        "requests": list(d.request_names),
                        "cdiDeviceIDs": list(d.cdi_ids),
                        "uuid": c.uuids.get(d.device, ""),
                    }
                    | ({"migInstance": _instance(c.instances[d.device])} if d.device in c.instances else {})
                    for d in c.devices
                ],
            }
            for uid, c in sorted(claims.items())
        },
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def _str(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {type(value).__name__}", source=source, key=key)
    return value


def _strs(value: Any, source: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError("must be a list of strings", source=source, key=key)
    return tuple(_str(v, source, f"{key}[{i}]") for i, v in enumerate(value))


def _int(value: Any, source: str, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"must be a non-negative integer, got {value!r}", source=source, key=key)
    return value


def _parse_instance(value: Any, source: str, key: str) -> MigInstance:
    if not isinstance(value, dict):
        raise ConfigError("must be a mapping", source=source, key=key)
    gi = value.get("gpuInstanceID")
    return MigInstance(
        _int(value.get("gpu"), source, f"{key}.gpu"),
        _str(value.get("profile"), source, f"{key}.profile"),
        _int(value.get("start"), source, f"{key}.start"),
        None if gi is None else _int(gi, source, f"{key}.gpuInstanceID"),
        _str(value.get("uuid", ""), source, f"{key}.uuid"),
    )


def parse(data: bytes | None, source: str) -> dict[str, PreparedClaim]:
    """The claims in a checkpoint (none when there is no file); ConfigError naming the file and key."""
    if data is None:
        return {}
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise ConfigError(f"not JSON: {err}", source=source) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} checkpoint", source=source, key="format")
    raw = doc.get("claims")
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of claim UID to claim", source=source, key="claims")
    claims: dict[str, PreparedClaim] = {}
    for uid, c in raw.items():
        key = f"claims.{uid}"
        if not isinstance(c, dict) or not isinstance(c.get("devices"), list):
            raise ConfigError("must be a mapping with devices", source=source, key=key)
        devices, uuids, instances = [], {}, {}
        for i, d in enumerate(c["devices"]):
            dk = f"{key}.devices[{i}]"
            if not isinstance(d, dict):
                raise ConfigError("must be a mapping", source=source, key=dk)
            name = _str(d.get("device"), source, f"{dk}.device")
            devices.append(
                PreparedDevice(
                    _strs(d.get("requests", []), source, f"{dk}.requests"),
                    _str(d.get("pool"), source, f"{dk}.pool"),
                    name,
                    _strs(d.get("cdiDeviceIDs", []), source, f"{dk}.cdiDeviceIDs"),
                )
            )
            uuids[name] = _str(d.get("uuid", ""), source, f"{dk}.uuid")
            if "migInstance" in d:
                instances[name] = _parse_instance(d["migInstance"], source, f"{dk}.migInstance")
        claims[uid] = PreparedClaim(
            uid,
            _str(c.get("namespace"), source, f"{key}.namespace"),
            _str(c.get("name"), source, f"{key}.name"),
            tuple(devices),
            uuids,
            instances,
        )
    return claims
