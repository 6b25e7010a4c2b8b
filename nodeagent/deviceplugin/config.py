"""NVIDIA's device-plugin config file, version v1, read as is (pure: text in, values out), so a user moving from
NVIDIA's plugin keeps their ConfigMap.

Understood: ``version: v1``, ``flags.migStrategy``, ``flags.plugin.deviceIDStrategy``,
``flags.plugin.deviceListStrategy`` and ``sharing.timeSlicing`` (``renameByDefault``,
``failRequestsGreaterThanOne``, ``resources`` with ``name``, ``replicas``, ``rename``, ``devices``). Any other
key is an error naming the file and the key, never silently ignored; ``sharing.mps`` is refused with its own
reason (MPS is out of scope). Unlike NVIDIA's plugin, one resource may have several entries with different
``devices`` and ``replicas``: time-slicing per GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from nodeagent.deviceplugin.resources import GPU_RESOURCE, MIG_PREFIX, MIG_STRATEGIES, SharedResource, TimeSlicing
from nodeagent.deviceplugin.settings import DEVICE_LIST_STRATEGIES, DevicePluginSettings, LabelSharing
from nodeagent.errors import ConfigError

VERSION = "v1"
MPS_REFUSED = "MPS is out of scope for nodeagent's device plugin (time-slicing is supported: sharing.timeSlicing)"


@dataclass(frozen=True)
class PluginConfig:
    """What the file sets; None: the file leaves it to the settings."""

    mig_strategy: str | None = None
    device_id_strategy: str | None = None
    device_list_strategy: tuple[str, ...] | None = None
    time_slicing: TimeSlicing | None = None


def parse(text: str, *, source: str) -> PluginConfig:
    """The config in ``text`` (YAML or JSON); ConfigError naming ``source`` and the key when it is bad."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML: {err}", source=source) from None
    top = _table(doc, source, "")
    _only(top, ("version", "flags", "sharing"), source, "")
    if top.get("version") != VERSION:
        raise ConfigError(f"version must be {VERSION!r}, got {top.get('version')!r}", source=source, key="version")
    mig = ids = lists = None
    if "flags" in top:
        flags = _table(top["flags"], source, "flags")
        _only(flags, ("migStrategy", "plugin"), source, "flags")
        if "migStrategy" in flags:
            mig = _choice(flags["migStrategy"], MIG_STRATEGIES, source, "flags.migStrategy")
        if "plugin" in flags:
            plugin = _table(flags["plugin"], source, "flags.plugin")
            _only(plugin, ("deviceIDStrategy", "deviceListStrategy"), source, "flags.plugin")
            if "deviceIDStrategy" in plugin:
                ids = _choice(plugin["deviceIDStrategy"], ("uuid", "index"), source, "flags.plugin.deviceIDStrategy")
            if "deviceListStrategy" in plugin:
                lists = _list_strategy(plugin["deviceListStrategy"], source)
    sharing = None
    if "sharing" in top:
        table = _table(top["sharing"], source, "sharing")
        if "mps" in table:
            raise ConfigError(MPS_REFUSED, source=source, key="sharing.mps")
        _only(table, ("timeSlicing",), source, "sharing")
        if "timeSlicing" in table:
            sharing = _time_slicing(_table(table["timeSlicing"], source, "sharing.timeSlicing"), source)
    return PluginConfig(mig, ids, lists, sharing)


def _time_slicing(table: Mapping[str, Any], source: str) -> TimeSlicing:
    key = "sharing.timeSlicing"
    _only(table, ("renameByDefault", "failRequestsGreaterThanOne", "resources"), source, key)
    rename_by_default = _bool(table.get("renameByDefault", False), source, f"{key}.renameByDefault")
    fail = _bool(table.get("failRequestsGreaterThanOne", False), source, f"{key}.failRequestsGreaterThanOne")
    raw = table.get("resources", [])
    if not isinstance(raw, list):
        raise ConfigError("must be a list", source=source, key=f"{key}.resources")
    entries = []
    for i, item in enumerate(raw):
        where = f"{key}.resources[{i}]"
        entry = _table(item, source, where)
        _only(entry, ("name", "rename", "replicas", "devices"), source, where)
        name = entry.get("name")
        if not isinstance(name, str) or not (name == GPU_RESOURCE or name.startswith(MIG_PREFIX)):
            raise ConfigError(
                f"name must be {GPU_RESOURCE} or {MIG_PREFIX}<profile>, got {name!r}",
                source=source,
                key=f"{where}.name",
            )
        replicas = entry.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"must be an integer >= 1, got {replicas!r}", source=source, key=f"{where}.replicas")
        rename = entry.get("rename", "")
        if not isinstance(rename, str):
            raise ConfigError("must be a resource name", source=source, key=f"{where}.rename")
        entries.append(SharedResource(replicas, name, rename, _devices(entry.get("devices", "all"), source, where)))
    _no_overlap(entries, source, key)
    return TimeSlicing(tuple(entries), rename_by_default, fail)


def _devices(value: Any, source: str, where: str) -> tuple[str, ...] | None:
    if value == "all":
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(
            'must be "all" or a list of GPU indexes, MIG indexes ("0:1") or UUIDs',
            source=source,
            key=f"{where}.devices",
        )
    out = []
    for j, d in enumerate(value):
        if isinstance(d, bool) or not isinstance(d, int | str):
            raise ConfigError(f"not a device index or UUID: {d!r}", source=source, key=f"{where}.devices[{j}]")
        out.append(str(d))
    return tuple(out)


def _no_overlap(entries: list[SharedResource], source: str, key: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(entries):
        for d in e.devices or ("all",):
            first = seen.setdefault((e.name, d), i)
            if first != i:
                raise ConfigError(
                    f"{e.name} device {d} is also in resources[{first}]", source=source, key=f"{key}.resources[{i}]"
                )


def _list_strategy(value: Any, source: str) -> tuple[str, ...]:
    key = "flags.plugin.deviceListStrategy"
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ConfigError("must be a strategy or a list of them", source=source, key=key)
    for v in values:
        if v == "volume-mounts":
            raise ConfigError(
                "volume-mounts is not supported; use cdi-cri, envvar or cdi-annotations", source=source, key=key
            )
        _choice(v, DEVICE_LIST_STRATEGIES, source, key)
    return tuple(values)


def _table(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("must be a mapping" if key else "the file must hold a mapping", source=source, key=key)
    return value


def _only(table: Mapping[str, Any], known: tuple[str, ...], source: str, key: str) -> None:
    for name in table:
        if name not in known:
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(
                f"not supported by nodeagent's device plugin (supported here: {', '.join(known)})",
                source=source,
                key=where,
            )


def _choice(value: Any, choices: tuple[str, ...], source: str, key: str) -> str:
    if value not in choices:
        raise ConfigError(f"{value!r} is not one of {', '.join(choices)}", source=source, key=key)
    return str(value)


def _bool(value: Any, source: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", source=source, key=key)
    return value


@dataclass(frozen=True)
class Effective:
    """What the plugin runs with: the settings, with the config file's values over them."""

    mig_strategy: str
    device_id_strategy: str
    device_list_strategy: tuple[str, ...]
    time_slicing: TimeSlicing
    source: str = "settings"


def from_settings(settings: DevicePluginSettings) -> TimeSlicing:
    """Time-slicing from ``[deviceplugin]``: ``replicas`` for every device, ``replicas_per_gpu`` per device."""
    entries = [SharedResource(r, devices=(str(k),)) for k, r in settings.replicas_per_gpu.items()]
    if settings.replicas > 1:
        entries.append(SharedResource(settings.replicas))
    return TimeSlicing(tuple(entries), settings.rename_by_default, settings.fail_requests_greater_than_one)


def effective(
    settings: DevicePluginSettings, mig_strategy: str, file: PluginConfig | None = None, *, source: str = ""
) -> Effective:
    """The values in effect. The file's ``flags.migStrategy`` must agree with ``labels.mig_strategy`` (one
    setting for the labels and the resources); its ``sharing.timeSlicing`` and the settings' time-slicing keys
    cannot both be set."""
    sharing = from_settings(settings)
    if file is None:
        return Effective(mig_strategy, settings.device_id_strategy, tuple(settings.device_list_strategy), sharing)
    if file.mig_strategy is not None and file.mig_strategy != mig_strategy:
        raise ConfigError(
            f"{file.mig_strategy!r} differs from labels.mig_strategy {mig_strategy!r}: the labels and the device "
            "plugin share one MIG strategy; set labels.mig_strategy",
            source=source,
            key="flags.migStrategy",
        )
    if file.time_slicing is not None:
        if sharing != TimeSlicing():
            raise ConfigError(
                "time-slicing is set both here and in [deviceplugin] (replicas, replicas_per_gpu, rename_by_default, "
                "fail_requests_greater_than_one); keep one",
                source=source,
                key="sharing.timeSlicing",
            )
        sharing = file.time_slicing
    return Effective(
        mig_strategy,
        file.device_id_strategy or settings.device_id_strategy,
        file.device_list_strategy or tuple(settings.device_list_strategy),
        sharing,
        source=source,
    )


def label_sharing(sharing: TimeSlicing) -> LabelSharing:
    """GFD's view of the time-slicing: per resource name its entry for all devices, else its first one."""
    chosen: dict[str, SharedResource] = {}
    for entry in sharing.resources:
        kept = chosen.get(entry.name)
        if kept is None or (kept.devices is not None and entry.devices is None):
            chosen[entry.name] = entry
    view = {
        name: (e.replicas, e.replicas > 1 and (bool(e.rename) or sharing.rename_by_default))
        for name, e in chosen.items()
    }
    every = view.pop("", None)
    return LabelSharing(view, every)
