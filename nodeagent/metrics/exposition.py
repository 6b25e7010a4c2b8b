"""Rendering a snapshot once, in the Prometheus text format and in OpenMetrics, plain and gzip.

``render`` runs once per snapshot (off the event loop) and returns an ``Exposition`` holding every
variant's bytes. A scrape then only adds a tiny per-scrape family, ``nodeagent_snapshot_age_seconds``,
which must be current; it is sent as a separate write from the cached bytes (``parts``), so no scrape
copies the body. For gzip the cached body is a deflate stream left open at a byte boundary, and
each scrape closes it with the tail as an uncompressed block and the trailer, so the response is one
ordinary gzip member that any client reads, at the cost of a CRC over ~150 bytes.

The series lines are identical in both formats; only the HELP/TYPE lines differ. dcgm-exporter's
counters do not end in ``_total``, which OpenMetrics requires of counter samples; renaming them would
break every dashboard, so in OpenMetrics they are typed ``unknown`` and keep their names.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from nodeagent.metrics.exporter_series import LABELLED_SOURCES, health_values, labelled_values
from nodeagent.metrics.fields import Counter, Kind, Scope, Source
from nodeagent.metrics.series_labels import Entity

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from nodeagent.metrics.collector import Snapshot
    from nodeagent.model.health import NodeGpuHealth


class Format(StrEnum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"


CONTENT_TYPES = {
    Format.TEXT: "text/plain; version=0.0.4; charset=utf-8",
    Format.OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}
AGE_METRIC = "nodeagent_snapshot_age_seconds"
_AGE_HEADER = f"# HELP {AGE_METRIC} Seconds since the served GPU readings were sampled.\n# TYPE {AGE_METRIC} gauge\n"
GZIP_LEVEL = 1
"""The body is very repetitive: level 1 already shrinks ~375 KB to ~11 KB, at a quarter of level 6's cost."""


# ------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Family:
    counter: Counter
    text_header: str
    om_header: str
    prefixes: tuple[str, ...]
    """``NAME{labels} `` for each entity of the layout, in order."""


@dataclass(frozen=True)
class Layout:
    """Pre-rendered series names and labels; rebuilt only when the inventory or pod mapping changes."""

    entities: tuple[Entity, ...]
    families: tuple[Family, ...]
    gpu_entities: tuple[Entity, ...] = ()
    """One per physical GPU, for per-GPU families (DCGM_EXP_GPU_HEALTH_STATUS)."""


def build_layout(
    entities: tuple[Entity, ...], counters: Sequence[Counter], gpu_entities: tuple[Entity, ...] = ()
) -> Layout:
    families = []
    for c in counters:
        if c.kind is Kind.LABEL:
            continue
        text_help = c.help.replace("\\", "\\\\").replace("\n", "\\n")
        om_help = text_help.replace('"', '\\"')
        om_type = "gauge" if c.kind is Kind.GAUGE else "unknown"
        families.append(
            Family(
                counter=c,
                text_header=f"# HELP {c.name} {text_help}\n# TYPE {c.name} {c.kind}\n",
                om_header=f"# HELP {c.name} {om_help}\n# TYPE {c.name} {om_type}\n",
                prefixes=tuple(
                    f"{c.name}{{{e.labels}}} " for e in (gpu_entities if c.spec.source is Source.HEALTH else entities)
                ),
            )
        )
    return Layout(entities, tuple(families), gpu_entities)


# ------------------------------------------------------------------------------------------- values


def value_of(counter: Counter, entity: Entity, snap: Snapshot) -> float | None:
    """The value of one series, or None when it is absent (unsupported, or not for this entity)."""
    spec = counter.spec
    index = entity.gpu.index
    if spec.source is Source.XID:
        return snap.last_xid.get(index)
    if spec.reading is None:
        return None
    if entity.mig is None or spec.scope is Scope.DEVICE:
        if not entity.whole_gpu:
            return None
        values = snap.gpus.get(index)
    elif spec.scope is Scope.INSTANCE:
        values = snap.mig.get((index, entity.mig.gpu_instance_id))
    else:
        return None
    if values is None:
        return None
    value = values.get(spec.reading)
    if value is None:
        if spec.fallback is None or entity.gpu.gpm_supported or entity.mig is not None:
            return None
        fallback = values.get(spec.fallback)
        return None if fallback is None else fallback * spec.fallback_scale
    return value * spec.scale if spec.scale != 1.0 else value


def format_value(value: float) -> str:
    if type(value) is int:
        return str(value)
    if math.isfinite(value):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def series_chunks(snap: Snapshot, layout: Layout, health: NodeGpuHealth | None = None) -> list[tuple[Family, str]]:
    """(family, its sample lines) for every family with at least one value; absent families are left out."""
    chunks = []
    for fam in layout.families:
        lines = []
        if fam.counter.spec.source is Source.HEALTH:
            for prefix, entity in zip(fam.prefixes, layout.gpu_entities, strict=True):
                head = prefix[:-2]
                lines += [f"{head},{extra}}} {format_value(v)}\n" for extra, v in health_values(entity, health)]
            if lines:
                chunks.append((fam, "".join(lines)))
            continue
        labelled = fam.counter.spec.source in LABELLED_SOURCES
        for prefix, entity in zip(fam.prefixes, layout.entities, strict=True):
            if labelled:  # series with labels of their own: NAME{entity labels,extra} value
                head = prefix[:-2]
                lines += [
                    f"{head},{extra}}} {format_value(v)}\n" for extra, v in labelled_values(fam.counter, entity, snap)
                ]
                continue
            value = value_of(fam.counter, entity, snap)
            if value is not None:
                lines.append(prefix + format_value(value) + "\n")
        if lines:
            chunks.append((fam, "".join(lines)))
    return chunks


# -------------------------------------------------------------------------------------- exposition


class Exposition:
    """One snapshot's response bodies in every variant; ``parts()`` is all a scrape costs.

    Uncompressed, the per-scrape age family goes first: headers and that small prefix make one write and
    the cached bytes (ending in ``# EOF`` for OpenMetrics) the other, with no copy of the body. Compressed
    (~10 KiB), the cached deflate stream comes first and the age is closed into it as a stored block.
    The text formats do not order families, so both carry the same series.
    """

    def __init__(self, taken_at: float, plain: Mapping[Format, bytes]) -> None:
        """``plain``: each format's cached bytes; OpenMetrics may already end in ``# EOF`` (render's does)."""
        self.taken_at = taken_at
        self.gzip: dict[Format, bytes] = {}
        self._crc: dict[Format, int] = {}
        self._size: dict[Format, int] = {}
        self._wire: dict[Format, memoryview] = {}
        """Uncompressed cached bytes as sent (OpenMetrics with its ``# EOF``). Memoryviews: a partial
        socket send slices a view, where slicing bytes would copy the rest."""
        for fmt, given in plain.items():
            wire = memoryview(given + _EOF if fmt is Format.OPENMETRICS and not given.endswith(_EOF) else given)
            content = wire[: -len(_EOF)] if fmt is Format.OPENMETRICS else wire
            comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            # A sync flush ends the deflate data on a byte boundary without finishing the stream, so a
            # scrape can append the tail as a final stored block plus the gzip trailer (see parts()).
            self.gzip[fmt] = b"".join((comp.compress(content), comp.flush(zlib.Z_SYNC_FLUSH)))
            self._crc[fmt] = zlib.crc32(content)
            self._size[fmt] = len(content)
            self._wire[fmt] = wire
        self._gzip_views = {fmt: memoryview(data) for fmt, data in self.gzip.items()}

    def plain_size(self, fmt: Format) -> int:
        return len(self._wire[fmt])

    @staticmethod
    def age(age_s: float) -> bytes:
        return f"{_AGE_HEADER}{AGE_METRIC} {max(age_s, 0.0):.3f}\n".encode()

    def parts(self, fmt: Format, gzip: bool, now: float) -> tuple[bytes | memoryview, bytes | memoryview]:
        """The response body in two pieces, to be written one after the other: joining them would copy
        the whole cached body (~270 KiB at 8 x 7 MIG) at every scrape."""
        age = self.age(now - self.taken_at)
        if not gzip:
            return age, self._wire[fmt]
        tail = age + _EOF if fmt is Format.OPENMETRICS else age
        # RFC 1951 stored block (BFINAL=1, BTYPE=00, LEN, NLEN) holding the tail, then the RFC 1952
        # trailer (CRC-32 and size of all the uncompressed data): one valid gzip member, no zlib call.
        n = len(tail)
        crc = zlib.crc32(tail, self._crc[fmt])
        size = (self._size[fmt] + n) & 0xFFFFFFFF
        return self._gzip_views[fmt], b"".join((b"\x01", _STORED.pack(n, n ^ 0xFFFF), tail, _TRAILER.pack(crc, size)))

    def body(self, fmt: Format, gzip: bool, now: float) -> bytes:
        """The whole body as one bytes object (tests, one-shot readers); scrapes use ``parts``."""
        return b"".join(self.parts(fmt, gzip, now))


_EOF = b"# EOF\n"
_STORED = struct.Struct("<HH")
_TRAILER = struct.Struct("<II")


def render(
    snap: Snapshot, layout: Layout, registry: CollectorRegistry | None, health: NodeGpuHealth | None = None
) -> Exposition:
    """Render every variant of one snapshot (blocking: run it off the event loop), with the node's
    published GPU health report for DCGM_EXP_GPU_HEALTH_STATUS.

    Each body is joined once from small encoded pieces: one large allocation per format, not a joined
    str, its encoding and a concatenation (large temporaries fragment the worker thread's heap)."""
    chunks = series_chunks(snap, layout, health)
    text_parts: list[bytes] = []
    om_parts: list[bytes] = []
    for fam, lines in chunks:
        encoded = lines.encode()
        text_parts += (fam.text_header.encode(), encoded)
        om_parts += (fam.om_header.encode(), encoded)
    if registry is not None:
        from prometheus_client import generate_latest
        from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

        text_parts.append(generate_latest(registry))
        om_registry: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
        om_parts.append(om_registry.removesuffix(_EOF))
    om_parts.append(_EOF)
    del chunks
    return Exposition(snap.taken_at, {Format.TEXT: b"".join(text_parts), Format.OPENMETRICS: b"".join(om_parts)})


# ------------------------------------------------------------------------------------- negotiation

_OM_VERSIONS = ("", "0.0.1", "1.0.0")


def negotiate(accept: str, accept_encoding: str) -> tuple[Format, bool]:
    """The format and compression a scraper asked for (Prometheus asks for OpenMetrics and gzip)."""
    om_q = text_q = 0.0
    for media_range in accept.split(","):
        mtype, params = _media(media_range)
        q = _q(params)
        if mtype == "application/openmetrics-text" and params.get("version", "") in _OM_VERSIONS:
            om_q = max(om_q, q)
        elif mtype in ("text/plain", "text/*", "*/*"):
            text_q = max(text_q, q)
    fmt = Format.OPENMETRICS if om_q > 0 and om_q >= text_q else Format.TEXT
    gzip = False
    for coding in accept_encoding.split(","):
        name, params = _media(coding)
        if name == "gzip":
            gzip = _q(params) > 0
    return fmt, gzip


def _media(item: str) -> tuple[str, dict[str, str]]:
    head, *rest = item.split(";")
    params: dict[str, str] = {}
    for p in rest:
        key, _, value = p.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return head.strip().lower(), params


def _q(params: Mapping[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 0.0
