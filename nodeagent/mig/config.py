"""mig-parted's config format, v1, exactly: parse, select a config, match GPUs, validate against their profiles.

::

    version: v1
    mig-configs:
      NAME:
        - device-filter: ["0x233010DE"]   # optional: string or list, PCI device id + vendor id
          devices: all | [0, 1, ...]      # required
          mig-enabled: true | false       # required
          mig-devices: {"1g.10gb": 7}     # required when enabled ({} allowed); empty when disabled

As nvidia-mig-parted reads it: ``version`` must be ``v1``; unknown keys are rejected; every config has at
least one entry; ``devices`` is ``all`` or a list of indexes; counts are integers >= 0 and not all 0; a
``device-filter`` value that is not a PCI id (a model name, as some of mig-parted's own tests write) is
valid, matches no GPU and is warned about, but a malformed id (``0xZZ``) is an error. A GPU takes every
entry whose device filter and devices match it, in order, as mig-parted applies them: each must be possible
on it, they must agree on mig-enabled, and it ends with the last one's layout. Errors name the file, the
config, the entry and the key. The same parser serves the ``mig`` commands, the settings
(``mig.config_file``) and the node label.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nodeagent.errors import ConfigError
from nodeagent.model.mig import MigTable
from nodeagent.model.mig_names import ProfileName, gpu_instance_name

VERSION = "v1"
NVIDIA_VENDOR_ID = 0x10DE
_ENTRY_KEYS = ("device-filter", "devices", "mig-enabled", "mig-devices")


@dataclass(frozen=True)
class DeviceId:
    """A PCI id as mig-parted writes it: ``0x233010DE`` (device, vendor), optionally ``:0x16C110DE``
    (subsystem device, subsystem vendor)."""

    device_vendor: int
    subsystem: int | None = None

    @classmethod
    def parse(cls, text: str) -> DeviceId:
        """ValueError with the reason for a malformed id."""
        parts = text.strip().split(":")
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"expected 0xDDDDVVVV or 0xDDDDVVVV:0xSSSSVVVV, got {text!r}")
        try:
            values = [int(p, 0) for p in parts]
        except ValueError:
            raise ValueError(f"not a number: {text!r} (expected e.g. 0x233010DE)") from None
        if any(not 0 <= v <= 0xFFFFFFFF for v in values):
            raise ValueError(f"out of range: {text!r}")
        return cls(values[0], values[1] if len(values) == 2 else None)

    @classmethod
    def of_gpu(cls, pci_device_id: int, pci_subsystem_id: int = 0) -> DeviceId:
        """The id of a GPU from NVML's device id (``0x2330``, or already packed) and subsystem id."""
        packed = pci_device_id if pci_device_id > 0xFFFF else (pci_device_id << 16) | NVIDIA_VENDOR_ID
        return cls(packed, pci_subsystem_id or None)

    def matches(self, gpu: DeviceId) -> bool:
        if self.device_vendor != gpu.device_vendor:
            return False
        return self.subsystem is None or self.subsystem == gpu.subsystem

    def __str__(self) -> str:
        text = f"0x{self.device_vendor:08X}"
        return f"{text}:0x{self.subsystem:08X}" if self.subsystem is not None else text


@dataclass(frozen=True)
class MigEntry:
    """One entry of a named config."""

    config: str
    index: int
    devices: tuple[int, ...] | None
    """GPU indexes, or None for ``all``."""
    device_filter: tuple[DeviceId, ...]
    """Empty (and no ``filter_names``): every GPU."""
    mig_enabled: bool
    mig_devices: tuple[tuple[str, int], ...]
    """(profile, count) in file order, zero counts kept as written."""
    filter_names: tuple[str, ...] = ()
    """Device-filter values that are not PCI ids (``"A100-SXM4-40GB"``): valid, as in mig-parted, and they match
    no GPU (mig-parted compares only PCI ids). Warned about (``warnings``)."""

    def matches(self, index: int, device_id: DeviceId) -> bool:
        filtered = bool(self.device_filter or self.filter_names)
        if filtered and not any(f.matches(device_id) for f in self.device_filter):
            return False
        return self.devices is None or index in self.devices

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(
            f'{self.where}.device-filter: {name!r} is not a PCI id (e.g. "0x233010DE"): it matches no GPU, as in '
            "mig-parted" + ("" if self.device_filter else "; this entry applies to no GPU")
            for name in self.filter_names
        )

    @property
    def matches_all_devices(self) -> bool:
        """``devices: all`` (whatever the device-filter): mig-parted skips a GPU that is not MIG-capable under
        such an entry instead of failing (``apply/mode.go``, ``MatchesAllDevices``)."""
        return self.devices is None

    @property
    def wanted(self) -> dict[str, int]:
        """Profile → count, without zero counts."""
        return {name: n for name, n in self.mig_devices if n > 0}

    @property
    def where(self) -> str:
        return f"mig-configs.{self.config}[{self.index}]"


@dataclass(frozen=True)
class GpuIdentity:
    """What config matching and validation need to know about one GPU."""

    index: int
    name: str
    device_id: DeviceId
    mig_capable: bool
    table: MigTable
    uuid: str = ""

    @property
    def label(self) -> str:
        """``GPU 0 (GPU-…)``: how a message about this GPU names it (index and UUID)."""
        return f"GPU {self.index} ({self.uuid})" if self.uuid else f"GPU {self.index}"

    @property
    def described(self) -> str:
        """``GPU 0 (NVIDIA H100 80GB HBM3, GPU-…)``."""
        return f"GPU {self.index} ({self.name}, {self.uuid})" if self.uuid else f"GPU {self.index} ({self.name})"


@dataclass(frozen=True)
class MigConfig:
    """One named config of a file."""

    source: str
    name: str
    entries: tuple[MigEntry, ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is valid but probably not meant (device-filter values that are model names), naming the entry."""
        return tuple(f"{self.source}: {w}" for e in self.entries for w in e.warnings)

    def entries_for(self, gpu: GpuIdentity) -> tuple[MigEntry, ...]:
        """Every entry matching this GPU, in file order: mig-parted applies each of them in turn."""
        return tuple(e for e in self.entries if e.matches(gpu.index, gpu.device_id))

    def entry_for(self, gpu: GpuIdentity) -> MigEntry | None:
        """The entry whose layout the GPU ends with (the last one matching it), or None when none does."""
        found = self.entries_for(gpu)
        return found[-1] if found else None

    def mode_conflict(self, gpu: GpuIdentity) -> str:
        """Why the entries matching this GPU cannot all be applied: they disagree on ``mig-enabled`` (mig-parted
        sets each one's mode in turn, then fails applying the devices of the one whose mode lost); '' when
        they agree."""
        found = self.entries_for(gpu)
        if len({e.mig_enabled for e in found}) < 2:
            return ""
        listed = ", ".join(f"{e.where} (mig-enabled: {str(e.mig_enabled).lower()})" for e in found)
        return (
            f"{gpu.described} is matched by {listed}: every matching entry is applied in order, so "
            "they must agree on mig-enabled (narrow devices or device-filter)"
        )

    def validate(self, gpus: Iterable[GpuIdentity]) -> None:
        """ConfigError (file, config, entry, key) when an entry asks a GPU for what it does not have, or the
        entries matching a GPU disagree on its MIG mode. Every matching entry is checked, as mig-parted applies
        each of them."""
        for gpu in gpus:
            conflict = self.mode_conflict(gpu)
            if conflict:
                raise self.error(self.entries_for(gpu)[-1], "mig-enabled", conflict)
            for entry in self.entries_for(gpu):
                self._validate_entry(gpu, entry)

    def _validate_entry(self, gpu: GpuIdentity, entry: MigEntry) -> None:
        if not gpu.mig_capable and entry.matches_all_devices:
            return  # skipped, as mig-parted skips it
        if entry.mig_enabled and not gpu.mig_capable:
            raise self.error(entry, "mig-enabled", f"{gpu.described} is not MIG-capable")
        for name, count in entry.mig_devices:
            profile = gpu.table.compute_profile(name)
            if profile is None and gpu.table.profile(gpu_instance_name(name)) is not None:
                reason = gpu.table.unknown_reason(name)
                raise self.error(entry, f"mig-devices.{name}", f"{gpu.described}: {reason}")
            if profile is None:
                close = difflib.get_close_matches(name, gpu.table.names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    entry,
                    f"mig-devices.{name}",
                    f"{gpu.described} has no MIG profile {name!r}{hint} (valid: {', '.join(gpu.table.names)})",
                )
            if count > profile.max_count:
                raise self.error(
                    entry,
                    f"mig-devices.{name}",
                    f"{count} exceeds the maximum of {profile.max_count} {name} instance(s) on {gpu.described}",
                )

    def error(self, entry: MigEntry, key: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=f"{entry.where}.{key}")


@dataclass(frozen=True)
class MigConfigFile:
    source: str
    configs: Mapping[str, tuple[MigEntry, ...]]

    def select(self, name: str | None) -> MigConfig:
        """The named config; with no name, the only one (as mig-parted). ConfigError names the valid ones."""
        if not name:
            if len(self.configs) == 1:
                name = next(iter(self.configs))
            else:
                raise ConfigError(
                    "more than one config in the file: choose one with -c NAME "
                    f"(one of: {', '.join(sorted(self.configs))})",
                    source=self.source,
                    key="mig-configs",
                )
        if name not in self.configs:
            close = difflib.get_close_matches(name, sorted(self.configs), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"no config named {name!r}{hint} (configs: {', '.join(sorted(self.configs))})",
                source=self.source,
                key="mig-configs",
            )
        return MigConfig(self.source, name, self.configs[name])


# ------------------------------------------------------------------------------------------------ parsing


def read_user_file(path: str | Path, what: str) -> str:
    """The text of a file the user named (a MIG config, a hooks file); ConfigError naming it otherwise."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", source=str(p)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {what}: {err}", source=str(p)) from None


def load_file(path: str | Path) -> MigConfigFile:
    return parse_text(read_user_file(path, "MIG config file"), source=str(path))


def parse_text(text: str, *, source: str) -> MigConfigFile:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"malformed YAML: {problem}", source=source, line=line) from None
    return parse_document(doc, source=source)


def parse_document(doc: Any, *, source: str) -> MigConfigFile:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, source=source, key=key)

    if not isinstance(doc, dict):
        raise fail("", "expected a mapping with `version: v1` and `mig-configs`")
    if "version" not in doc:
        raise fail("version", "missing (expected `version: v1`)")
    if doc["version"] != VERSION:
        raise fail("version", f"unknown version {doc['version']!r}; expected {VERSION!r}")
    for key in doc:
        if key not in ("version", "mig-configs"):
            raise fail(str(key), f"unknown key{_hint(str(key), ('version', 'mig-configs'))}")
    configs = doc.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        raise fail("mig-configs", "expected a non-empty mapping of config names to lists of entries")
    parsed: dict[str, tuple[MigEntry, ...]] = {}
    for name, entries in configs.items():
        if not isinstance(name, str) or not name:
            raise fail(f"mig-configs.{name}", "config names must be non-empty strings")
        if not isinstance(entries, list) or not entries:
            raise fail(f"mig-configs.{name}", "expected a non-empty list of entries")
        parsed[name] = tuple(_entry(name, i, raw, source) for i, raw in enumerate(entries))
    return MigConfigFile(source, parsed)


def _entry(config: str, index: int, raw: Any, source: str) -> MigEntry:
    where = f"mig-configs.{config}[{index}]"

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, source=source, key=f"{where}.{key}" if key else where)

    if not isinstance(raw, dict):
        raise fail("", "expected a mapping with devices, mig-enabled and mig-devices")
    for key in raw:
        if key not in _ENTRY_KEYS:
            raise fail(str(key), f"unknown key{_hint(str(key), _ENTRY_KEYS)}")
    for key in ("devices", "mig-enabled"):
        if key not in raw:
            raise fail(key, "missing (required)")

    devices_raw = raw["devices"]
    devices: tuple[int, ...] | None
    if isinstance(devices_raw, str):
        if devices_raw != "all":
            raise fail("devices", f"expected `all` or a list of GPU indexes, got {devices_raw!r}")
        devices = None
    elif isinstance(devices_raw, list) and all(_is_int(d) and d >= 0 for d in devices_raw):
        devices = tuple(devices_raw)
    else:
        raise fail("devices", f"expected `all` or a list of GPU indexes, got {devices_raw!r}")

    filters: list[DeviceId] = []
    names: list[str] = []
    if "device-filter" in raw:
        df = raw["device-filter"]
        texts = [df] if isinstance(df, str) else df
        if _is_int(df) or (isinstance(df, list) and any(_is_int(t) for t in df)):
            raise fail("device-filter", 'YAML read an unquoted id as a number: quote it, e.g. "0x233010DE"')
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise fail("device-filter", f"expected a PCI id string or a list of them, got {df!r}")
        for t in texts:
            if not t:
                continue
            if not _looks_numeric(t):
                names.append(t)
                continue
            try:
                filters.append(DeviceId.parse(t))
            except ValueError as err:
                raise fail("device-filter", str(err)) from None

    enabled = raw["mig-enabled"]
    if not isinstance(enabled, bool):
        raise fail("mig-enabled", f"expected true or false, got {enabled!r}")

    mig_devices: list[tuple[str, int]] = []
    md = raw.get("mig-devices")
    if md is not None:
        if not isinstance(md, dict):
            raise fail("mig-devices", f"expected a mapping of profile to count, got {md!r}")
        for name, count in md.items():
            key = f"mig-devices.{name}"
            if not isinstance(name, str):
                raise fail(key, "not a MIG profile name (expected e.g. 1g.10gb, 1g.10gb+me or 1c.3g.20gb)")
            try:
                ProfileName.parse(name)
            except ValueError as err:
                raise fail(key, f"not a MIG profile name: {err}") from None
            if not _is_int(count) or count < 0:
                raise fail(key, f"expected a count >= 0, got {count!r}")
            mig_devices.append((name, count))
        if mig_devices and not any(n > 0 for _, n in mig_devices):
            raise fail("mig-devices", "all counts are 0 (use {} for MIG enabled without instances)")
    if enabled and md is None:
        raise fail("mig-devices", "missing: required when mig-enabled is true ({} for none)")
    if not enabled and mig_devices:
        raise fail("mig-devices", "MIG devices given while mig-enabled is false")
    return MigEntry(config, index, devices, tuple(filters), enabled, tuple(mig_devices), tuple(names))


def _looks_numeric(text: str) -> bool:
    """A PCI id (or a malformed one: an error), as opposed to a name such as ``A100-SXM4-40GB`` (valid, matches
    nothing): it starts with a digit, as ``0x...`` and every number does."""
    return text.strip()[:1].isdigit()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _hint(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(valid)})"


# ------------------------------------------------------------------------------------------------ writing


def render(configs: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A v1 document as mig-parted writes it (flow-style lists for devices and device-filter)."""
    lines = [f"version: {VERSION}", "mig-configs:"]
    for name, entries in configs.items():
        lines.append(f"  {name}:")
        for entry in entries:
            first = True
            for key in _ENTRY_KEYS:
                if key not in entry:
                    continue
                value = entry[key]
                prefix = "    - " if first else "      "
                first = False
                if key == "mig-devices":
                    if not value:
                        lines.append(f"{prefix}{key}: {{}}")
                        continue
                    lines.append(f"{prefix}{key}:")
                    lines.extend(f'        "{p}": {n}' for p, n in value.items())
                elif key == "device-filter":
                    items = value if isinstance(value, list) else [value]
                    lines.append(f"{prefix}{key}: [{', '.join(repr(str(v)).replace(chr(39), chr(34)) for v in items)}]")
                elif key == "devices":
                    text = "all" if value == "all" else f"[{', '.join(str(v) for v in value)}]"
                    lines.append(f"{prefix}{key}: {text}")
                else:
                    lines.append(f"{prefix}{key}: {'true' if value else 'false'}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
