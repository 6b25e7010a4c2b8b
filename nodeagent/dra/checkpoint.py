"""The DRA plugin's checkpoint (format ``nodeagent.dra-checkpoint/v1``, pure parse and render): every prepared
claim with its devices and CDI device IDs, so a second NodePrepareResources answers the same, Unprepare knows
what to remove, and after an agent restart the per-claim CDI specs (in /var/run, gone after a reboot or
deleted by anyone) are rebuilt. Written atomically through the Root after every change."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.backends.dra_server import PreparedDevice
from nodeagent.errors import ConfigError

FORMAT = "nodeagent.dra-checkpoint/v1"


@dataclass(frozen=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]
    uuids: Mapping[str, str]
    """Device name → the UUID its CDI edits came from (to rebuild the spec)."""


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
        devices, uuids = [], {}
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
        claims[uid] = PreparedClaim(
            uid,
            _str(c.get("namespace"), source, f"{key}.namespace"),
            _str(c.get("name"), source, f"{key}.name"),
            tuple(devices),
            uuids,
        )
    return claims
