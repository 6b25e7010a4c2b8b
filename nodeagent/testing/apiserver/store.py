"""The test API server's storage: objects under one global resourceVersion counter, the retained history
(older versions are compacted: a watch from before them gets 410), the open watches fed from it, label and
field selectors, and the request counters tests read."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from nodeagent.testing.apiserver.resources import ResourceType


@dataclass(eq=False)
class Watcher:
    rt: ResourceType
    namespace: str
    field_name: dict[str, str]
    selector: list[tuple[str, str, str | None]]
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]


@dataclass
class Counters:
    requests: Counter[str] = field(default_factory=Counter)
    """User → requests (every authenticated request, watches included)."""
    writes: Counter[str] = field(default_factory=Counter)
    """User → mutating requests (create, update, patch, delete), stored or not."""
    stored: Counter[str] = field(default_factory=Counter)
    """User → writes that changed an object."""
    by_verb: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(verb, resource) → requests."""
    write_times: list[tuple[float, str]] = field(default_factory=list)
    """(time, user) of every mutating request, for startup-spread measurements."""


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    terms: list[tuple[str, str, str | None]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append(("!=", k.strip(), v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif term.startswith("!"):
            terms.append(("!", term[1:], None))
        else:
            terms.append(("exists", term, None))
    return terms


def field_value(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def selected(obj: dict[str, Any], fields: dict[str, str], selector: list[tuple[str, str, str | None]]) -> bool:
    """``fields``: field path → wanted value (the equality field selectors the real server supports)."""
    meta = obj.get("metadata", {})
    if any(field_value(obj, path) != value for path, value in fields.items()):
        return False
    labels = meta.get("labels") or {}
    for op, key, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


class Store:
    def __init__(self, history: int = 1000) -> None:
        self.rv = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: deque[tuple[int, str, str, dict[str, Any]]] = deque()
        self.history_size = history
        self.compacted_rv = 0
        """Events at or below this resourceVersion are gone: a watch from before it gets 410."""
        self.watchers: set[Watcher] = set()

    def _record(self, rt: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, rt.plural, kind, obj))
        while len(self.history) > self.history_size:
            self.compacted_rv = self.history.popleft()[0]
        ns = obj["metadata"].get("namespace", "")
        for w in list(self.watchers):
            same = w.rt.plural == rt.plural and (not w.namespace or w.namespace == ns)
            if same and selected(obj, w.field_name, w.selector):
                w.queue.put_nowait((kind, obj))

    def compact(self) -> None:
        self.history.clear()
        self.compacted_rv = self.rv

    def put(self, rt: ResourceType, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        self.objects[(rt.plural, meta.get("namespace", ""), meta["name"])] = obj
        self._record(rt, kind, copy.deepcopy(obj))
        return obj

    def delete(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.pop((rt.plural, namespace, name))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(rt, "DELETED", copy.deepcopy(obj))
        return obj

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((rt.plural, namespace, name))

    def items(self, rt: ResourceType, namespace: str) -> list[dict[str, Any]]:
        return [
            o
            for (plural, ns, _), o in sorted(self.objects.items())
            if plural == rt.plural and (not namespace or ns == namespace)
        ]


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without server-managed fields, to decide whether a write changes anything."""
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    return out
