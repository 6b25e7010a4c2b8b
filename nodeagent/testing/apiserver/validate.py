"""Object validation as the real API server answers it (422 Invalid with field and reason): names, label and
annotation keys and values, RuntimeClass handlers, Node condition times and taints, NodeFeature labels,
ResourceSlices' counters (``validate_slices.py``); and the
identity checks of a request body (kind, apiVersion, name, namespace)."""

from __future__ import annotations

from typing import Any

from nodeagent.kube import validation
from nodeagent.testing.apiserver.resources import (
    ANNOTATIONS_MAX_BYTES,
    RFC3339,
    TAINT_EFFECTS,
    ApiError,
    ResourceType,
)
from nodeagent.testing.apiserver.validate_slices import slice_problems


def node_problems(node: dict[str, Any]) -> list[tuple[str, str]]:
    """The Node validation's rules for conditions and taints (field, message). kube-apiserver 1.34 checks
    neither a condition's ``type`` (required, unique) nor its ``status`` (True, False, Unknown): it stores
    them as sent. A time that is not RFC 3339 fails the decoding of the patched object (cause ``patch``)."""
    causes: list[tuple[str, str]] = []
    for cond in (node.get("status") or {}).get("conditions") or []:
        for key in ("lastTransitionTime", "lastHeartbeatTime"):
            value = cond.get(key) if isinstance(cond, dict) else None
            if value is not None and not RFC3339.match(str(value)):
                causes.append(
                    (
                        "patch",
                        f'Invalid value: "{value}": parsing time "{value}" as "2006-01-02T15:04:05Z07:00": '
                        "cannot parse as RFC 3339",
                    )
                )
    pairs: set[tuple[str, str]] = set()
    for i, taint in enumerate((node.get("spec") or {}).get("taints") or []):
        where = f"metadata.taints[{i}]"  # sic: kube-apiserver's validateNodeTaints names this path
        key = taint.get("key", "") if isinstance(taint, dict) else ""
        problems = validation.key_problems(key) if key else ["Required value"]
        causes.extend((f"{where}.key", p) for p in problems)
        effect = taint.get("effect") if isinstance(taint, dict) else None
        if effect not in TAINT_EFFECTS:
            supported = ", ".join(f'"{v}"' for v in TAINT_EFFECTS)
            causes.append((f"{where}.effect", f'Unsupported value: "{effect}": supported values: {supported}'))
        if (key, str(effect)) in pairs:
            causes.append((f"{where}", f'Duplicate value: "{key}:{effect}"'))
        pairs.add((key, str(effect)))
    return causes


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 with one cause per (field, message)."""
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    return ApiError(
        422,
        f'{rt.kind} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        },
    )


def check_identity(rt: ResourceType, ns: str, name: str, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if obj.get("kind", rt.kind) != rt.kind or obj.get("apiVersion", rt.api_version) != rt.api_version:
        raise ApiError(400, f"the body is a {obj.get('apiVersion')}/{obj.get('kind')}, not {rt.api_version}/{rt.kind}")
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise ApiError(400, "metadata must be an object")
    if name and meta.get("name", name) != name:
        raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
    if rt.namespaced and meta.get("namespace", ns) != ns:
        raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
    return obj


def validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    meta = obj["metadata"]
    name = meta.get("name", "")
    causes: list[tuple[str, str]] = []
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif rt.plural != "events" and not validation.is_dns1123_subdomain(name):
        causes.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist'
                " of lower case alphanumeric characters, '-' or '.'",
            )
        )
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str):
            causes.append((f"metadata.labels.{key}", "Invalid value: label values must be strings"))
            continue
        for problem in validation.key_problems(key):
            causes.append(("metadata.labels", f'Invalid value: "{key}": {problem}'))
        for problem in validation.value_problems(value):
            causes.append(("metadata.labels", f'Invalid value: "{value}": {problem}'))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        for problem in validation.key_problems(key):
            causes.append(("metadata.annotations", f'Invalid value: "{key}": {problem}'))
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > ANNOTATIONS_MAX_BYTES:
        causes.append(("metadata.annotations", f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"))
    if rt.plural == "runtimeclasses":
        handler = obj.get("handler")
        if not isinstance(handler, str) or not handler:
            causes.append(("handler", "Required value"))
        elif len(handler) > 63 or not validation.is_dns1123_subdomain(handler) or "." in handler:
            causes.append(
                (
                    "handler",
                    f'Invalid value: "{handler}": a lowercase RFC 1123 label must consist of'
                    " lower case alphanumeric characters or '-'",
                )
            )
        elif old is not None and old.get("handler") != handler:
            causes.append(("handler", f'Invalid value: "{handler}": field is immutable'))
    if rt.plural == "nodes":
        causes.extend(node_problems(obj))
    if rt.plural == "events":
        causes.extend(event_namespace_problems(obj))
    if rt.plural == "resourceslices":
        causes.extend(slice_problems(obj))
    if rt.plural == "nodefeatures":
        labels = (obj.get("spec") or {}).get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            causes.append(("spec.labels", "Invalid value: must be a map of strings"))
    if causes:
        raise invalid(rt, name, causes)


CLUSTER_SCOPED_KINDS = frozenset({"Node", "PersistentVolume", "Namespace", "RuntimeClass"})


def event_namespace_problems(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The real API server's rule: an Event about a cluster-scoped object (no involvedObject namespace) lives
    in ``default`` (or no namespace); one about a namespaced object lives in that object's namespace."""
    involved = event.get("involvedObject") or {}
    if not isinstance(involved, dict):
        return [("involvedObject", "Invalid value: must be an object")]
    own = event["metadata"].get("namespace", "")
    theirs = involved.get("namespace") or ""
    if involved.get("kind") in CLUSTER_SCOPED_KINDS and theirs:
        return [("involvedObject.namespace", f'Invalid value: "{theirs}": not allowed for kind {involved["kind"]}')]
    if not theirs and own not in ("", "default"):
        return [("involvedObject.namespace", 'Invalid value: "": does not match event.namespace')]
    if theirs and own != theirs:
        return [("involvedObject.namespace", f'Invalid value: "{theirs}": does not match event.namespace')]
    return []
