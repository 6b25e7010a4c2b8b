"""Parser for dcgm-exporter's counters file: ``field, type, help`` per line, ``#`` comments.

Users bring the CSV they already run dcgm-exporter with; its own files (default-counters.csv,
dcp-metrics-included.csv, 1.x-compatibility-metrics.csv) load unchanged. Every problem is a ConfigError
naming the file and line. Any name DCGM resolves is accepted: a legacy alias (``dcgm_sm_clock``) serves
the field with the same id under the CSV's name, as dcgm-exporter does; a real field this agent does not
produce is a warning (it is absent, as a field the GPU does not support would be). A name listed twice
is a warning too (dcgm-exporter's 1.x file lists one twice); the first line wins. A name that is not a
DCGM field at all is an error, with the closest valid name when there is one.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.errors import ConfigError
from nodeagent.metrics.fields import Counter, Kind, known_names, resolve, unserved_reason

_TYPES = {k.value: k for k in Kind}
_REJECTED_TYPES = {"histogram", "summary"}


@dataclass(frozen=True)
class CounterSet:
    counters: tuple[Counter, ...]
    skipped: tuple[str, ...] = ()
    """Known DCGM fields this agent cannot read and repeated lines (each with its line and why), for
    status details and logs."""


def parse(text: str, *, source: str = "<counters>") -> CounterSet:
    counters: list[Counter] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in _records(text):
        row = _split(line, source, lineno)
        if len(row) != 3:
            raise ConfigError(
                f"expected 3 columns `field, type, help`, got {len(row)}: {line.strip()!r}",
                source=source,
                line=lineno,
            )
        name, type_text, help_text = row
        if not name:
            raise ConfigError("empty field name", source=source, line=lineno)
        kind = _kind(type_text, name, source, lineno)
        if name in seen:
            skipped.append(f"{name} (line {lineno}): listed again, line {seen[name]} is used")
            continue
        seen[name] = lineno
        spec = resolve(name)
        if spec is None:
            reason = unserved_reason(name)
            if reason is not None:
                skipped.append(f"{name} (line {lineno}): {reason}")
                continue
            raise ConfigError(_unknown(name), source=source, line=lineno)
        if (kind is Kind.LABEL) != (spec.kind is Kind.LABEL):
            expected = "label" if spec.kind is Kind.LABEL else "gauge or counter"
            raise ConfigError(f"{name} must have type {expected}, not {type_text}", source=source, line=lineno)
        alias = name if name != spec.name else ""
        counters.append(Counter(spec, kind, help_text or spec.help, alias))
    return CounterSet(tuple(counters), tuple(skipped))


def _records(text: str) -> Iterable[tuple[int, str]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield lineno, line


def _split(line: str, source: str, lineno: int) -> list[str]:
    try:
        (row,) = list(csv.reader([line], skipinitialspace=True, strict=True))
    except (csv.Error, ValueError) as err:
        raise ConfigError(f"malformed CSV: {err}", source=source, line=lineno) from None
    return [cell.strip() for cell in row]


def _kind(text: str, name: str, source: str, lineno: int) -> Kind:
    lowered = text.lower()
    if lowered in _REJECTED_TYPES:
        raise ConfigError(f"{name}: type {text} is not supported; use gauge or counter", source=source, line=lineno)
    kind = _TYPES.get(lowered)
    if kind is None:
        raise ConfigError(
            f"{name}: unknown type {text!r}; valid: {', '.join(_TYPES)}",
            source=source,
            line=lineno,
        )
    return kind


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown DCGM field {name}{hint}"
