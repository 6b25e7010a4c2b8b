"""The three patch formats the Kubernetes API server accepts, applied to plain JSON objects.

- JSON merge patch (RFC 7386, ``application/merge-patch+json``): maps merge recursively, ``null``
  deletes, anything else (lists included) replaces.
- Strategic merge patch (``application/strategic-merge-patch+json``): like merge patch, but lists that
  have a patch merge key in the built-in types are merged element by element on that key, and the
  ``$patch: replace|delete`` directives apply. Only the list fields of the types the test API server
  serves are known (Node conditions, addresses, taints, images...). Custom resources have no strategic
  merge patch: the server answers 415 for them, as the real one does.
- JSON patch (RFC 6902, ``application/json-patch+json``): add, remove, replace, move, copy, test.

``PatchError`` carries the HTTP status the API server would answer (400 malformed, 422 a failed test).
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS: dict[str, str] = {
    "conditions": "type",
    "addresses": "type",
    "taints": "key",
    "volumesAttached": "name",
    "ownerReferences": "uid",
    "tolerations": "key",
}
"""Field name → patch merge key for the lists of Node / RuntimeClass / metadata (k8s.io/api tags)."""


class PatchError(Exception):
    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if directive == "delete":
            return None
        if directive is not None:
            raise PatchError(f"unknown patch type: {directive!r} in {field or 'the patch'}")
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                result.pop(key, None)
                continue
            merged = strategic_merge_patch(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        return result
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        return _merge_list(target, patch, MERGE_KEYS[field], field)
    return copy.deepcopy(patch)


def _merge_list(target: list[Any], patch: list[Any], key: str, field: str) -> list[Any]:
    """Merge by ``key`` in apimachinery's order: the patch's elements in the patch's order, with the elements
    only the server has put back among them by their place in the stored list (``mergeSortedSlice``); a new
    condition comes first, an updated one keeps its place."""
    server_order = [old.get(key) for old in target if isinstance(old, dict)]
    merged: list[Any] = []
    patched_keys: list[Any] = []
    deleted: set[Any] = set()
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"{field}: every element of a merged list needs its merge key {key!r}")
        if item.get("$patch") == "delete":
            deleted.add(item[key])
            continue
        old = next((o for o in target if isinstance(o, dict) and o.get(key) == item[key]), None)
        merged.append(strategic_merge_patch(copy.deepcopy(old) if old is not None else {}, item, field))
        patched_keys.append(item[key])
    server_only = [
        copy.deepcopy(o)
        for o in target
        if not (isinstance(o, dict) and (o.get(key) in patched_keys or o.get(key) in deleted))
    ]
    return _merge_sorted(server_only, merged, server_order, key)


def _merge_sorted(left: list[Any], right: list[Any], server_order: list[Any], key: str) -> list[Any]:
    """apimachinery's ``mergeSortedSlice``: a ``left`` element goes first only when both it and the next
    ``right`` element are in the stored list and it stood before that one there."""

    def place(item: Any) -> int:
        value = item.get(key) if isinstance(item, dict) else None
        return server_order.index(value) if value in server_order else -1

    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j >= len(right):
            out.append(left[i])
            i += 1
        elif i >= len(left):
            out.append(right[j])
            j += 1
        else:
            li, ri = place(left[i]), place(right[j])
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"path {path!r} does not exist", 422)
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"path {path!r} does not exist", 422)


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document", 422)
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"unable to remove nonexistent key: {last}: missing value", 422)


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {path}: missing value", 422)
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise PatchError(f"index out of range in {path!r}", 422)
    else:
        raise PatchError(f"path {path!r} does not exist", 422)
    return doc


def json_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in patch:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"JSON patch {kind} at {path!r} has no value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            doc = _add(doc, path, _remove(doc, op.get("from", "")))
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""))))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed: test failed", 422)
        else:
            raise PatchError(f"unexpected JSON patch operation {kind!r}")
    return doc
