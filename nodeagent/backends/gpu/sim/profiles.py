"""GPU models for the simulator: built-in profiles (nodeagent.model.catalog), files written by
``nodeagent sim record``, the ``--simulate PROFILE[:COUNT]`` spec, and MIG layouts with placement rules.

A profile holds what does not change between GPUs of one model (name, PCI ids, memory, limits, clocks,
the GPU-instance profiles and their placements, which readings NVML answers NotSupported) plus idle
baselines the simulated readings start from. The h100-80gb-hbm3 profile is built from a real capture
(tests/backends/data/h100-80gb-hbm3); the others from public specifications.
The MIG placement rules themselves live in ``nodeagent.model.mig`` (shared with the MIG planner).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.errors import ConfigError
from nodeagent.model import catalog
from nodeagent.model.gpu import NVLINK_ERROR_READINGS, MigProfile, Reading
from nodeagent.model.mig import MigTable, find_placement
from nodeagent.model.mig_compute import ComputePlacement, pack_compute
from nodeagent.model.mig_names import gpu_instance_name

PROFILE_FORMAT = "nodeagent.gpu-profile/v1"
DEFAULT_PROFILE = "h100-80gb-hbm3"
DEFAULT_COUNT = 8
MAX_COUNT = 64


def count_problem(count: object) -> str:
    """How every bad GPU count is worded (``--simulate P:COUNT``, ``simulation.count``, a profile's ``count``)."""
    return f"{count!r} must be between 1 and {MAX_COUNT}"


@dataclass(frozen=True)
class GpuProfile:
    """One GPU model as the simulator replays it."""

    key: str
    """Built-in name (``h100-80gb-hbm3``) or the file path it was loaded from."""
    name: str
    """NVML name, e.g. ``NVIDIA H100 80GB HBM3``."""
    brand: str
    architecture: str
    pci_device_id: int
    pci_subsystem_id: int
    compute_capability: tuple[int, int]
    memory_total_mib: int
    memory_reserved_mib: int
    vbios_version: str
    serial_prefix: str
    driver_version: str
    nvml_version: str
    cuda_driver_version: int
    power_limit_w: float
    power_min_limit_w: float
    power_max_limit_w: float
    power_idle_w: float
    sm_clock_idle_mhz: int
    sm_clock_max_mhz: int
    mem_clock_idle_mhz: int
    mem_clock_max_mhz: int
    temp_idle_c: float
    memory_temp_idle_c: float
    temp_slowdown_c: float
    pstate_idle: int
    pstate_busy: int
    pcie_generation: int
    pcie_width: int
    not_supported: frozenset[Reading]
    gpm_supported: bool = False
    """NVML's GPM (the profiling metrics): Hopper and newer; without it the GPM readings are absent."""
    nvlink_bandwidth_gbs: float = 0.0
    """Total NVLink bandwidth of one GPU, both directions, all links (GB/s; 900 for NVLink 4 on H100 SXM)."""
    nvlink_links: int = 0
    """NVLinks of one GPU, all to the board's NVSwitches (18 on HGX H100; 0: a PCIe board, no NVLink)."""
    mig_capable: bool = False
    mig_memory_slices: int = 0
    mig_compute_slices: int = 0
    mig_profiles: tuple[MigProfile, ...] = ()
    mig_details: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per GI profile name: multiprocessors and engine counts (copy, decoder, encoder, jpeg, ofa)."""
    default_count: int = DEFAULT_COUNT
    description: str = ""
    source: str = ""

    def supports(self, reading: Reading) -> bool:
        return reading not in self.not_supported

    def mig_profile(self, name: str) -> MigProfile:
        """The GPU-instance profile called ``name``; ConfigError names the valid ones."""
        for p in self.mig_profiles:
            if p.name == name:
                return p
        if not self.mig_capable:
            raise ConfigError(f"{self.name} ({self.key}) is not MIG-capable; it has no profile {name!r}")
        valid = [p.name for p in self.mig_profiles]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown MIG profile {name!r} for {self.name}{hint} (valid: {', '.join(valid)})")


# ------------------------------------------------------------------------------------------- loading


def builtin_names() -> list[str]:
    """Keys of the built-in profiles."""
    return catalog.builtin_keys()


@functools.lru_cache(maxsize=16)
def _builtin(key: str) -> GpuProfile:
    text = catalog.builtin_text(key)
    return profile_from_json(
        _parse_json(text, source=f"built-in profile {key}"), source=f"built-in profile {key}", key=key
    )


def builtin_for_name(gpu_name: str) -> GpuProfile | None:
    """The built-in profile of a GPU model by its NVML name (for placements NVML will not list)."""
    for key in builtin_names():
        profile = _builtin(key)
        if profile.name == gpu_name:
            return profile
    return None


def load_profile(name_or_path: str) -> GpuProfile:
    """A built-in profile by name, or a JSON profile file (as ``nodeagent sim record`` writes it)."""
    spec = name_or_path.strip()
    names = builtin_names()
    if spec in names:
        return _builtin(spec)
    if "/" in spec or spec.endswith(".json") or Path(spec).is_file():
        return load_profile_file(Path(spec))
    close = closest_profiles(spec, names)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"unknown simulation profile {spec!r}{hint} (built-in: {', '.join(names)}; or a path to a JSON profile)"
    )


def closest_profiles(spec: str, names: list[str]) -> list[str]:
    """The built-in names ``spec`` most likely means: of the same model (its first part), those sharing most
    of its parts (``a100-40gb`` is ``a100-sxm4-40gb``, ``h200`` is ``h200-141gb-hbm3e``; ``a100`` either A100),
    else the closest spelling."""
    parts = [p for p in re.split(r"[-_ ]+", spec.lower()) if p]
    scores = {n: sum(p in n.split("-") for p in parts) for n in names if parts and n.split("-")[0] == parts[0]}
    if scores:
        best = max(scores.values())
        return [n for n, score in scores.items() if score == best][:3]
    return difflib.get_close_matches(spec.lower(), names, n=1)


def load_profile_file(path: Path) -> GpuProfile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("simulation profile file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read simulation profile: {err}", source=str(path)) from None
    return profile_from_json(_parse_json(text, source=str(path)), source=str(path), key=str(path))


def _parse_json(text: str, *, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed JSON: {err.msg} (column {err.colno})", source=source, line=err.lineno) from None


def parse_simulate_spec(spec: str | None) -> tuple[str, int]:
    """``PROFILE[:COUNT]`` → (profile, count). Empty means 8 x h100-80gb-hbm3; a JSON profile's own count
    is the default for that file. PROFILE may be a path to a JSON profile."""
    text = (spec or "").strip()
    if not text:
        return DEFAULT_PROFILE, DEFAULT_COUNT
    profile, sep, count_text = text.rpartition(":")
    if not sep or not count_text.strip().lstrip("-").isdigit():
        profile, count_text = text, ""
    profile = profile.strip() or DEFAULT_PROFILE
    loaded = load_profile(profile)
    if not count_text:
        return profile, loaded.default_count
    count = int(count_text)
    if not 1 <= count <= MAX_COUNT:
        raise ConfigError(count_problem(count), source="--simulate", key="simulation.count")
    return profile, count


# ---------------------------------------------------------------------------------------- JSON format


class _Doc:
    """Typed access to a JSON object with errors naming the file and the key path."""

    def __init__(self, value: Any, *, source: str, path: str = "") -> None:
        self.value = value
        self.source = source
        self.path = path
        if not isinstance(value, dict):
            raise self.error("must be a JSON object")
        self.seen: set[str] = set()

    def error(self, message: str, key: str = "") -> ConfigError:
        where = f"{self.path}.{key}" if self.path and key else (key or self.path)
        return ConfigError(message, source=self.source, key=where)

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        if key not in self.value:
            if default is _REQUIRED:
                raise self.error("missing (a required key)", key)
            return default
        return self.value[key]

    def str_(self, key: str, default: Any = None) -> str:
        v = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(v, str):
            raise self.error(f"expected a string, got {v!r}", key)
        return v

    def int_(self, key: str, default: Any = None, *, low: int | None = 0) -> int:
        v = self._get(key, _REQUIRED if default is None else default)
        if isinstance(v, str) and re.fullmatch(r"0[xX][0-9a-fA-F]+", v):
            v = int(v, 16)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"expected an integer, got {v!r}", key)
        if low is not None and v < low:
            raise self.error(f"must be >= {low}, got {v}", key)
        return v

    def num_(self, key: str, default: Any = None, *, low: float = 0.0) -> float:
        v = self._get(key, _REQUIRED if default is None else default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(f"expected a number, got {v!r}", key)
        if v < low:
            raise self.error(f"must be >= {low:g}, got {v}", key)
        return float(v)

    def bool_(self, key: str, default: Any = None) -> bool:
        v = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(v, bool):
            raise self.error(f"expected true or false, got {v!r}", key)
        return v

    def list_(self, key: str, default: Any = None) -> list[Any]:
        v = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(v, list):
            raise self.error(f"expected a list, got {v!r}", key)
        return v

    def obj(self, key: str, *, optional: bool = False) -> _Doc | None:
        v = self._get(key, None if optional else _REQUIRED)
        if v is None:
            return None
        return _Doc(v, source=self.source, path=f"{self.path}.{key}" if self.path else key)

    def req_obj(self, key: str) -> _Doc:
        d = self.obj(key)
        assert d is not None
        return d

    def done(self) -> None:
        """Reject unknown keys (a misspelt key is an error, with the closest valid one)."""
        for key in self.value:
            if key not in self.seen:
                close = difflib.get_close_matches(key, sorted(self.seen), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(f"unknown key{hint}", key)


_REQUIRED = object()


def profile_from_json(doc: Any, *, source: str, key: str) -> GpuProfile:
    """Validate a profile document; ConfigError names the file and the key path of the first problem."""
    if not isinstance(doc, dict) or "format" not in doc:
        what = "a JSON object without a format key" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise ConfigError(
            f'missing: {what} is not a nodeagent GPU profile (one starts with "format": "{PROFILE_FORMAT}", '
            "as `nodeagent sim record` writes it)",
            source=source,
            key="format" if isinstance(doc, dict) else "",
        )
    root = _Doc(doc, source=source)
    fmt = root.str_("format")
    if fmt != PROFILE_FORMAT:
        raise root.error(f"unsupported profile format {fmt!r}; expected {PROFILE_FORMAT!r}", "format")
    description = root.str_("description", "")
    origin = root.str_("source", "")
    count = root.int_("count", DEFAULT_COUNT, low=None)
    if not 1 <= count <= MAX_COUNT:
        raise root.error(count_problem(count), "count")
    drv = root.req_obj("driver")
    driver_version, nvml_version = drv.str_("version"), drv.str_("nvml_version")
    cuda = drv.int_("cuda_driver_version")
    drv.done()

    gpu = root.req_obj("gpu")
    cc = gpu.list_("compute_capability")
    if len(cc) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in cc):
        raise gpu.error(f"expected [major, minor], got {cc!r}", "compute_capability")
    power = gpu.req_obj("power")
    clocks = gpu.req_obj("clocks")
    temp = gpu.req_obj("temperature")
    pstate = gpu.req_obj("pstate")
    pcie = gpu.req_obj("pcie")
    total = gpu.int_("memory_total_mib", low=1)
    reserved = gpu.int_("memory_reserved_mib")
    if reserved >= total:
        raise gpu.error("must be below memory_total_mib", "memory_reserved_mib")
    fields: dict[str, Any] = {
        "name": gpu.str_("name"),
        "brand": gpu.str_("brand"),
        "architecture": gpu.str_("architecture"),
        "pci_device_id": gpu.int_("pci_device_id"),
        "pci_subsystem_id": gpu.int_("pci_subsystem_id"),
        "compute_capability": (cc[0], cc[1]),
        "memory_total_mib": total,
        "memory_reserved_mib": reserved,
        "vbios_version": gpu.str_("vbios_version"),
        "serial_prefix": gpu.str_("serial_prefix", ""),
        "power_limit_w": power.num_("limit_w", low=1),
        "power_min_limit_w": power.num_("min_limit_w"),
        "power_max_limit_w": power.num_("max_limit_w"),
        "power_idle_w": power.num_("idle_w"),
        "sm_clock_idle_mhz": clocks.int_("sm_idle_mhz"),
        "sm_clock_max_mhz": clocks.int_("sm_max_mhz", low=1),
        "mem_clock_idle_mhz": clocks.int_("mem_idle_mhz"),
        "mem_clock_max_mhz": clocks.int_("mem_max_mhz", low=1),
        "temp_idle_c": temp.num_("idle_c"),
        "memory_temp_idle_c": temp.num_("memory_idle_c", 0.0),
        "temp_slowdown_c": temp.num_("slowdown_c", low=1),
        "pstate_idle": pstate.int_("idle"),
        "pstate_busy": pstate.int_("busy"),
        "pcie_generation": pcie.int_("generation", low=1),
        "pcie_width": pcie.int_("width", low=1),
        # Optional: GPM follows the architecture (NVML's GPM is Hopper and newer) unless the file says.
        "gpm_supported": gpu.bool_("gpm", (cc[0], cc[1]) >= (9, 0)),
        "nvlink_bandwidth_gbs": gpu.num_("nvlink_bandwidth_gbs", 0.0),
        "nvlink_links": gpu.int_("nvlink_links", 0),
    }
    if not fields["serial_prefix"].isdigit() and fields["serial_prefix"]:
        raise gpu.error("must be digits", "serial_prefix")
    if fields["power_idle_w"] >= fields["power_limit_w"]:
        raise power.error("must be below limit_w", "idle_w")
    for d in (power, clocks, temp, pstate, pcie, gpu):
        d.done()

    not_supported: set[Reading] = set()
    valid = {r.value for r in Reading}
    for i, item in enumerate(root.list_("not_supported", [])):
        if item not in valid:
            close = difflib.get_close_matches(str(item), sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise root.error(f"unknown reading {item!r}{hint}", f"not_supported[{i}]")
        not_supported.add(Reading(item))
    if Reading.NVLINK_BANDWIDTH_TOTAL in not_supported:  # no NVLink (PCIe boards): no NVLink error counters
        not_supported |= NVLINK_ERROR_READINGS

    mig = root.obj("mig", optional=True)
    mig_fields: dict[str, Any] = {}
    if mig is not None:
        mig_fields = _mig_from_json(mig, total_mib=total)
    root.done()
    return GpuProfile(
        key=key,
        driver_version=driver_version,
        nvml_version=nvml_version,
        cuda_driver_version=cuda,
        not_supported=frozenset(not_supported),
        default_count=count,
        description=description,
        source=origin,
        **fields,
        **mig_fields,
    )


_ENGINES = ("copy", "decoder", "encoder", "jpeg", "ofa")


def _mig_from_json(mig: _Doc, *, total_mib: int) -> dict[str, Any]:
    memory_slices = mig.int_("memory_slices", low=1)
    compute_slices = mig.int_("compute_slices", low=1)
    profiles: list[MigProfile] = []
    details: dict[str, dict[str, int]] = {}
    for i, raw in enumerate(mig.list_("profiles")):
        p = _Doc(raw, source=mig.source, path=f"{mig.path}.profiles[{i}]")
        name = p.str_("name")
        if any(q.name == name for q in profiles):
            raise p.error(f"duplicate profile {name!r}", "name")
        slices = p.int_("slices", low=1)
        starts = p.list_("starts")
        if not starts or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts):
            raise p.error(f"expected a non-empty list of start slices, got {starts!r}", "starts")
        for s in starts:
            if s + slices > memory_slices:
                raise p.error(f"start {s} + size {slices} exceeds the {memory_slices} memory slices", "starts")
        memory_mib = p.int_("memory_mib", low=1)
        if memory_mib > total_mib:
            raise p.error("exceeds the GPU's memory", "memory_mib")
        cs = p.int_("compute_slices", low=1)
        if cs > compute_slices:
            raise p.error(f"exceeds the GPU's {compute_slices} compute slices", "compute_slices")
        info = {"multiprocessors": p.int_("multiprocessors", 0)}
        engines = p.obj("engines", optional=True)
        if engines is not None:
            for e in _ENGINES:
                info[e] = engines.int_(e, 0)
            engines.done()
        profiles.append(
            MigProfile(
                name=name,
                profile_id=p.int_("id"),
                slices=slices,
                starts=tuple(sorted(starts)),
                memory_mib=memory_mib,
                compute_slices=cs,
                max_count=p.int_("max_count", low=1),
                media_extensions=p.bool_("media_extensions", "+me" in name),
            )
        )
        details[name] = info
        p.done()
    mig.done()
    return {
        "mig_capable": True,
        "mig_memory_slices": memory_slices,
        "mig_compute_slices": compute_slices,
        "mig_profiles": tuple(profiles),
        "mig_details": details,
    }


def profile_to_json(p: GpuProfile) -> dict[str, Any]:
    """The document ``profile_from_json`` reads back (the format ``nodeagent sim record`` writes)."""
    doc: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "description": p.description,
        "source": p.source,
        "count": p.default_count,
        "driver": {
            "version": p.driver_version,
            "nvml_version": p.nvml_version,
            "cuda_driver_version": p.cuda_driver_version,
        },
        "gpu": {
            "name": p.name,
            "brand": p.brand,
            "architecture": p.architecture,
            "pci_device_id": f"0x{p.pci_device_id:04X}",
            "pci_subsystem_id": f"0x{p.pci_subsystem_id:08X}",
            "compute_capability": list(p.compute_capability),
            "memory_total_mib": p.memory_total_mib,
            "memory_reserved_mib": p.memory_reserved_mib,
            "vbios_version": p.vbios_version,
            "serial_prefix": p.serial_prefix,
            "power": {
                "limit_w": p.power_limit_w,
                "min_limit_w": p.power_min_limit_w,
                "max_limit_w": p.power_max_limit_w,
                "idle_w": p.power_idle_w,
            },
            "clocks": {
                "sm_idle_mhz": p.sm_clock_idle_mhz,
                "sm_max_mhz": p.sm_clock_max_mhz,
                "mem_idle_mhz": p.mem_clock_idle_mhz,
                "mem_max_mhz": p.mem_clock_max_mhz,
            },
            "temperature": {
                "idle_c": p.temp_idle_c,
                "memory_idle_c": p.memory_temp_idle_c,
                "slowdown_c": p.temp_slowdown_c,
            },
            "pstate": {"idle": p.pstate_idle, "busy": p.pstate_busy},
            "pcie": {"generation": p.pcie_generation, "width": p.pcie_width},
            "gpm": p.gpm_supported,
            "nvlink_bandwidth_gbs": p.nvlink_bandwidth_gbs,
            "nvlink_links": p.nvlink_links,
        },
        "not_supported": sorted(r.value for r in p.not_supported),
    }
    if p.mig_capable:
        doc["mig"] = {
            "memory_slices": p.mig_memory_slices,
            "compute_slices": p.mig_compute_slices,
            "profiles": [_mig_profile_json(m, p.mig_details.get(m.name, {})) for m in p.mig_profiles],
        }
    return doc


def _mig_profile_json(m: MigProfile, details: Mapping[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": m.name,
        "id": m.profile_id,
        "slices": m.slices,
        "starts": list(m.starts),
        "memory_mib": m.memory_mib,
        "compute_slices": m.compute_slices,
        "max_count": m.max_count,
        "media_extensions": m.media_extensions,
    }
    if details.get("multiprocessors"):
        out["multiprocessors"] = details["multiprocessors"]
    engines = {e: details[e] for e in _ENGINES if e in details}
    if engines:
        out["engines"] = engines
    return out


def parse_mig_layout(spec: str, profile: GpuProfile) -> list[tuple[MigProfile, tuple[ComputePlacement, ...]]]:
    """``1g.10gb*7``, ``3g.40gb,4g.40gb`` or ``1c.3g.40gb*3,2c.2g.20gb`` → the GPU instances to create on each
    GPU with their compute instances (slices, start; empty: one spanning it), checked to fit. Compute
    instances of one GPU-instance profile share the fewest GPU instances that hold them."""
    text = spec.strip()
    if not text:
        return []
    if not profile.mig_capable:
        raise ConfigError(
            f"{profile.name} ({profile.key}) is not MIG-capable; leave mig_layout empty",
            key="simulation.mig_layout",
        )
    table = MigTable(profile.mig_profiles, profile.mig_memory_slices, profile.mig_compute_slices)
    sizes: dict[str, list[int]] = {}
    for item in text.split(","):
        part = item.strip()
        name, star, count_text = part.partition("*")
        name = name.strip()
        if not name:
            raise ConfigError(f"empty entry in {spec!r}; expected PROFILE[*COUNT], ...", key="simulation.mig_layout")
        count = 1
        if star:
            if not count_text.strip().isdigit() or int(count_text) < 1:
                raise ConfigError(
                    f"bad count in {part!r}; expected PROFILE*COUNT with COUNT >= 1", key="simulation.mig_layout"
                )
            count = int(count_text)
        try:
            gi = profile.mig_profile(gpu_instance_name(name))
        except ConfigError as err:
            raise ConfigError(err.bare_message, key="simulation.mig_layout") from None
        cp = table.compute_profile(name)
        if cp is None:
            raise ConfigError(f"{name}: {table.unknown_reason(name)}", key="simulation.mig_layout")
        sizes.setdefault(gi.name, []).extend([cp.slices] * count)
    targets: list[tuple[MigProfile, tuple[ComputePlacement, ...]]] = []
    for gi_name, wanted_sizes in sizes.items():
        gi = profile.mig_profile(gi_name)
        for lay in pack_compute(gi.compute_slices, wanted_sizes) or []:
            targets.append((gi, () if lay == ((gi.compute_slices, 0),) else lay))
    wanted = [gi for gi, _ in targets]
    for mp in {m.name: m for m in wanted}.values():
        n = sum(1 for m in wanted if m.name == mp.name)
        if n > mp.max_count:
            raise ConfigError(
                f"{mp.name}*{n}: {profile.name} allows at most {mp.max_count} instance(s) of {mp.name}",
                key="simulation.mig_layout",
            )
    if (
        find_placement(wanted, memory_slices=profile.mig_memory_slices, compute_slices=profile.mig_compute_slices)
        is None
    ):
        raise ConfigError(
            f"{spec!r} does not fit on one {profile.name}: {profile.mig_memory_slices} memory slices and "
            f"{profile.mig_compute_slices} compute slices, with the placements "
            + "; ".join(f"{m.name} at {{{','.join(map(str, m.starts))}}}:{m.slices}" for m in profile.mig_profiles),
            key="simulation.mig_layout",
        )
    return targets
