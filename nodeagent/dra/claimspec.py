"""The transient CDI spec of one prepared claim (pure), built from the agent's own CDI spec (``cdi.spec_path``,
which the cdi subsystem keeps in step with the driver and the GPUs): it names exactly the claim's devices.

Kind ``k8s.gpu.nvidia.com/claim`` (not the node spec's ``nvidia.com/gpu``, so the two never clash), one device
per allocated device, named ``<claim UID>-<device>`` with that device's edits from the node spec (found by
its UUID), and the node spec's common edits (driver libraries, control nodes, hooks). The file is
``<CDI dir>/k8s.gpu.nvidia.com-claim_<claim UID>.yaml``; its CDI device IDs are what NodePrepareResources
answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from nodeagent.errors import ConfigError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
KIND = "k8s.gpu.nvidia.com/claim"
FILE_PREFIX = "k8s.gpu.nvidia.com-claim_"


def spec_path(cdi_dir: str, claim_uid: str) -> str:
    return str(PurePosixPath(cdi_dir, f"{FILE_PREFIX}{claim_uid}.yaml"))


def device_id(claim_uid: str, device: str) -> str:
    return f"{KIND}={claim_uid}-{device}"


def parse_node_spec(data: bytes | None, source: str) -> Mapping[str, Any]:
    """The node's CDI spec; ConfigError naming the file when it is missing or not a spec."""
    if data is None:
        raise ConfigError("no CDI spec (the cdi subsystem writes it when the driver is ready)", source=source)
    try:
        spec = yaml.load(data, Loader=_LOADER)  # a safe loader (libyaml's when there is one)
    except yaml.YAMLError as err:
        raise ConfigError(f"not YAML: {err}", source=source) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("devices"), list):
        raise ConfigError("not a CDI spec", source=source, key="devices")
    return spec


def build(
    node_spec: Mapping[str, Any], claim_uid: str, devices: Sequence[tuple[str, str]], *, source: str
) -> dict[str, Any]:
    """The claim's spec; ``devices``: (published device name, UUID). ConfigError naming ``source`` when the node
    spec has no device of that UUID (the node spec is behind the inventory: prepare again later)."""
    by_name = {d.get("name"): d for d in node_spec["devices"] if isinstance(d, dict)}
    listed = []
    for name, uuid in devices:
        entry = by_name.get(uuid)
        if entry is None:
            raise ConfigError(f"no device {uuid} (for {name})", source=source, key="devices")
        listed.append({"name": f"{claim_uid}-{name}", "containerEdits": entry.get("containerEdits") or {}})
    spec: dict[str, Any] = {
        "cdiVersion": node_spec.get("cdiVersion", "0.5.0"),
        "kind": KIND,
        "devices": listed,
    }
    if node_spec.get("containerEdits"):
        spec["containerEdits"] = node_spec["containerEdits"]
    return spec


def render(spec: Mapping[str, Any]) -> bytes:
    return yaml.dump(dict(spec), Dumper=_DUMPER, sort_keys=False).encode()
