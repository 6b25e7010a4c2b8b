"""Building the settings: defaults < TOML file < NODEAGENT_* environment < CLI flags.

Unknown keys, wrong types and bad values are rejected with the file (or variable, or flag), the key path
and, for a misspelt key, the closest valid one. The environment uses a double underscore between section
and key: ``NODEAGENT_RUNTIME__SET_AS_DEFAULT=true``. Renamed keys keep working with a warning.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from nodeagent.errors import ConfigError, GpuServedTwice
from nodeagent.settings.sections import SECTIONS, SETTINGS_VERSION, Settings

ENV_PREFIX = "NODEAGENT_"

# ----------------------------------------------------------------------------------------------- aliases

RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("metrics", "kubelet_socket"): ("kubelet", "pod_resources_socket"),
    ("runtime", "drift_poll_s"): ("watch", "poll_s"),
}
"""Old key → new key. The old name keeps working (file, environment, flag) with a warning naming both."""


class DeprecatedSetting(FutureWarning):
    """A settings key that was renamed: it still works, the warning names the new key."""


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _put(raw: dict[str, dict[str, Any]], sources: Sources, section: str, key: str, value: Any, *, where: str) -> None:
    """Record one value; an old (renamed) key is stored under its new name, with a warning."""
    if (section, key) in RENAMED:
        new_section, new_key = RENAMED[(section, key)]
        from_env = where.startswith("environment ")
        old = env_name(section, key) if from_env else f"{section}.{key}"
        new = env_name(new_section, new_key) if from_env else f"{new_section}.{new_key}"
        if sources.get((new_section, new_key)) == where:
            raise ConfigError(f"{old} is the old name of {new}; set only {new}", source=where, key=f"{section}.{key}")
        place = "" if from_env else f" (in {where})"
        warnings.warn(f"{old} is deprecated, use {new}{place}", DeprecatedSetting, stacklevel=3)
        section, key = new_section, new_key
        sources[("", f"{section}.{key}")] = where  # the old name was used here
    elif sources.get(("", f"{section}.{key}")) == where:
        raise ConfigError(f"set twice (also under its old name); set only {section}.{key}", source=where)
    raw.setdefault(section, {})[key] = value
    sources[(section, key)] = where


# ----------------------------------------------------------------------------------------------- loading

Sources = dict[tuple[str, str], str]
"""(section, key) → where its value came from (file path, variable name or flag)."""


def load(
    *,
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[tuple[str, str], Any] | None = None,
    cli_names: Mapping[tuple[str, str], str] | None = None,
) -> Settings:
    """Build Settings from a TOML file, the environment and CLI overrides; raise ConfigError if bad."""
    raw: dict[str, dict[str, Any]] = {}
    sources: Sources = {}
    if file is not None:
        _merge_file(Path(file), raw, sources)
    _merge_env(env or {}, raw, sources)
    for (section, key), value in (cli or {}).items():
        _put(
            raw, sources, section, key, value, where=(cli_names or {}).get((section, key), f"--{key.replace('_', '-')}")
        )
    return _build(raw, sources)


def _merge_file(path: Path, raw: dict[str, dict[str, Any]], sources: Sources) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("settings file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a TOML file", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read: {err}", source=str(path)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"malformed TOML: {err}", source=str(path)) from None
    version = doc.pop("version", None)
    if version is None:
        raise ConfigError(f"missing `version = {SETTINGS_VERSION}` at the top", source=str(path), key="version")
    if version != SETTINGS_VERSION:
        raise ConfigError(
            f"unsupported settings version {version!r}; this agent reads version {SETTINGS_VERSION}",
            source=str(path),
            key="version",
        )
    for section, table in doc.items():
        if section not in SECTIONS:
            raise ConfigError(_unknown("section", section, SECTIONS), source=str(path), key=section)
        if not isinstance(table, dict):
            raise ConfigError("must be a table, e.g. [" + section + "]", source=str(path), key=section)
        for key, value in table.items():
            _put(raw, sources, section, key, value, where=str(path))


def _merge_env(env: Mapping[str, str], raw: dict[str, dict[str, Any]], sources: Sources) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in SECTIONS:
            raise ConfigError(_unknown("section", section, SECTIONS), source=f"environment {name}")
        _put(raw, sources, section, key, _EnvText(value), where=f"environment {name}")


class _EnvText(str):
    """A value from the environment: text that is converted to the field's type."""


def _build(raw: dict[str, dict[str, Any]], sources: Sources) -> Settings:
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            where = sources.get((section, key), "")
            if key not in fields:
                raise ConfigError(_unknown("key", key, fields), source=where, key=f"{section}.{key}")
            converted = _convert(value, hints[key], source=where, key=f"{section}.{key}")
            check = fields[key].metadata.get("check")
            problem = check(converted) if check else None
            if problem:
                raise ConfigError(f"{converted!r} {problem}", source=where, key=f"{section}.{key}")
            kwargs[key] = converted
        built[section] = cls(**kwargs)
    settings = Settings(**built)
    _cross_checks(settings)
    return settings


def _cross_checks(settings: Settings) -> None:
    if settings.metrics.slow_interval_s < settings.metrics.interval_s:
        raise ConfigError("must be >= metrics.interval_s", key="metrics.slow_interval_s")
    if settings.agent.restart_backoff_max_s < settings.agent.restart_backoff_initial_s:
        raise ConfigError("must be >= agent.restart_backoff_initial_s", key="agent.restart_backoff_max_s")
    if settings.dra.enabled and settings.deviceplugin.enabled and not settings.dra.gpus:
        raise GpuServedTwice(
            "the device plugin (deviceplugin.enabled) and DRA (dra.enabled) would both serve every GPU, so one GPU "
            "could be allocated twice: set deviceplugin.enabled = false to serve GPUs through DRA, or name DRA's "
            "GPUs in dra.gpus",
            key="dra.enabled",
        )
    if settings.dra.enabled and settings.dra.dynamic_mig and settings.mig.enabled and settings.mig.config:
        raise ConfigError(
            "the MIG subsystem would apply mig-parted config "
            f"{settings.mig.config!r} on the GPUs whose instances dynamic MIG (dra.dynamic_mig) creates and "
            "destroys per claim: leave mig.config empty (or set mig.enabled = false) with dra.dynamic_mig",
            key="dra.dynamic_mig",
        )


def _unknown(kind: str, name: str, valid: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"
    return f"unknown {kind} {name!r}{hint}"


def _convert(value: Any, hint: Any, *, source: str, key: str) -> Any:
    origin = get_origin(hint)
    from_env = isinstance(value, _EnvText)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"expected {expected}, got {value!r}", source=source, key=key)

    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_text = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{value!r} is not one of {', '.join(map(repr, choices))}{hint_text}", source=source, key=key
            )
        return str(value)
    if hint is bool:
        if from_env:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise bad("a boolean (true/false)")
        if not isinstance(value, bool):
            raise bad("a boolean (true/false)")
        return value
    if hint is int:
        if from_env:
            try:
                return int(value)
            except ValueError:
                raise bad("an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if from_env:
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return str(value)
    if origin is list:
        (item,) = get_args(hint)
        if from_env:
            value = [_EnvText(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad("a list")
        return [_convert(v, item, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(hint)
        if from_env:
            raise ConfigError(
                "tables cannot be set from the environment; use the settings file", source=source, key=key
            )
        if not isinstance(value, dict):
            raise bad("a table")
        return {str(k): _convert(v, item, source=source, key=f"{key}.{k}") for k, v in value.items()}
    if isinstance(hint, types.UnionType):
        raise TypeError(f"unsupported settings type {hint}")
    raise TypeError(f"unsupported settings type {hint}")
