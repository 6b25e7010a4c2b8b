"""Small helpers for reading parsed exposition output in tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def samples(families: Iterable[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, for every sample of every family."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
