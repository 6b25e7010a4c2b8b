"""From what the labels subsystem observed to a Plan: which publishers must write what. Pure.

Each publisher contributes at most its steps; a publisher whose target could not be read (API server
unreachable, 403, no Node yet) contributes a warning instead, so the others still publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodeagent.labels import publish_nfd, publish_node, publish_nodefeature, publish_runtimeclass
from nodeagent.labels.labelers import LabelSet
from nodeagent.plan import Plan, Step, file_diff


@dataclass
class Targets:
    """Which publishers are on, and where they write."""

    node_name: str
    nfd_file: str = ""
    """Host path, empty when the file publisher is off."""
    node_patch: bool = False
    node_feature: bool = False
    namespace: str = ""
    runtime_handlers: tuple[str, ...] = ()


@dataclass
class Observation:
    label_set: LabelSet | None = None
    problems: list[str] = field(default_factory=list)
    """Why no label set could be computed."""
    nfd_existing: bytes | None = None
    node: dict[str, Any] | None = None
    nodefeature: dict[str, Any] | None = None
    runtimeclasses: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    kube_problems: dict[str, str] = field(default_factory=dict)
    """Publisher (``node``, ``nodefeature``, ``runtimeclasses``, ``kube``) → why it cannot publish now."""


def _node_steps(obs: Observation, targets: Targets, labels: Mapping[str, str], shown: Mapping[str, str]) -> list[Step]:
    if obs.node is None:
        return []
    patch = publish_node.node_patch(obs.node, labels)
    if patch is None:
        return []
    changes = patch["metadata"].get("labels", {})
    removed = sum(1 for v in changes.values() if v is None)
    before, after = publish_node.label_lines(obs.node, shown)
    summary = f"merge-patch {len(changes) - removed} label(s), remove {removed} stale owned label(s)"
    return [
        Step(
            "patch-node",
            f"Node/{targets.node_name}",
            summary,
            diff=file_diff(f"/Node/{targets.node_name}/labels", before, after),
            payload=patch,
        )
    ]


def _nodefeature_steps(
    obs: Observation, targets: Targets, labels: Mapping[str, str], shown: Mapping[str, str]
) -> list[Step]:
    name = publish_nodefeature.object_name(targets.node_name)
    target = f"NodeFeature/{targets.namespace}/{name}"
    if obs.nodefeature is None:
        body = publish_nodefeature.desired(targets.node_name, targets.namespace, labels)
        return [Step("create-nodefeature", target, f"create with {len(labels)} labels", payload=body)]
    updated = publish_nodefeature.update(obs.nodefeature, targets.node_name, labels)
    if updated is None:
        return []
    old = (obs.nodefeature.get("spec") or {}).get("labels") or {}
    diff = file_diff(f"/{target}/spec.labels", publish_nfd.render(old), publish_nfd.render(shown))
    return [Step("update-nodefeature", target, f"update to {len(labels)} labels", diff=diff, payload=updated)]


def _runtimeclass_steps(obs: Observation, targets: Targets) -> list[Step]:
    steps = []
    for handler in targets.runtime_handlers:
        if handler not in obs.runtimeclasses:
            continue
        existing = obs.runtimeclasses[handler]
        action = publish_runtimeclass.action(existing, handler)
        if not action:
            continue
        summary = {
            "create": f"create RuntimeClass for handler {handler}",
            "recreate": f"handler is {(existing or {}).get('handler')!r}, not {handler!r}: delete and create again",
            "label": f"mark as managed by nodeagent ({publish_runtimeclass.MANAGED_BY})",
        }[action]
        steps.append(Step(f"{action}-runtimeclass", f"RuntimeClass/{handler}", summary, payload=handler))
    return steps


TIMESTAMP = "nvidia.com/gfd.timestamp"
FRESH_TIMESTAMP = "<publication time>"
"""How a plan's diff shows a timestamp that is not published yet (its value is the time of applying)."""


def _published(obs: Observation, targets: Targets) -> list[Mapping[str, str]]:
    """The label sets the publishers hold now (only the keys the agent owns for the Node)."""
    found: list[Mapping[str, str]] = []
    if targets.nfd_file and obs.nfd_existing is not None:
        found.append(publish_nfd.parse(obs.nfd_existing))
    if targets.node_patch and obs.node is not None:
        current = (obs.node.get("metadata") or {}).get("labels") or {}
        found.append({k: current[k] for k in publish_node.owned_keys(obs.node) if k in current})
    if targets.node_feature and obs.nodefeature is not None:
        found.append((obs.nodefeature.get("spec") or {}).get("labels") or {})
    return found


def keep_published_timestamp(labels: dict[str, str], obs: Observation, targets: Targets) -> dict[str, str]:
    """GFD stamps every start; the agent keeps the published timestamp while every other label is
    unchanged, so a restart writes nothing. The timestamp moves when the label set changes."""
    if TIMESTAMP not in labels:
        return labels
    rest = {k: v for k, v in labels.items() if k != TIMESTAMP}
    for published in _published(obs, targets):
        stamp = published.get(TIMESTAMP)
        if stamp and {k: v for k, v in published.items() if k != TIMESTAMP} == rest:
            return {**labels, TIMESTAMP: stamp}
    return labels


def plan(obs: Observation, targets: Targets, subsystem: str = "labels") -> Plan:
    if obs.label_set is None:
        return Plan(subsystem, error="; ".join(obs.problems) or "no labels computed")
    computed = dict(obs.label_set.labels)
    labels = keep_published_timestamp(computed, obs, targets)
    shown = dict(labels)
    if TIMESTAMP in labels and not any(p.get(TIMESTAMP) == labels[TIMESTAMP] for p in _published(obs, targets)):
        shown[TIMESTAMP] = FRESH_TIMESTAMP
    steps: list[Step] = []
    if targets.nfd_file:
        step = publish_nfd.plan_step(targets.nfd_file, obs.nfd_existing, labels, shown)
        if step is not None:
            steps.append(step)
    if targets.node_patch:
        steps += _node_steps(obs, targets, labels, shown)
    if targets.node_feature:
        steps += _nodefeature_steps(obs, targets, labels, shown)
    steps += _runtimeclass_steps(obs, targets)
    warnings = [f"{publisher}: {why}" for publisher, why in sorted(obs.kube_problems.items())]
    warnings += [f"label {key}={value!r} not published: {why}" for key, value, why in obs.label_set.dropped]
    warnings += list(obs.label_set.warnings)
    evidence = [f"{len(labels)} labels computed"]
    publishers = [
        name
        for name, on in (
            (f"NFD file {targets.nfd_file}", bool(targets.nfd_file)),
            (f"Node {targets.node_name}", targets.node_patch),
            (f"NodeFeature in {targets.namespace or '?'}", targets.node_feature),
            (f"RuntimeClasses {', '.join(targets.runtime_handlers)}", bool(targets.runtime_handlers)),
        )
        if on
    ]
    evidence.append("publishers: " + (", ".join(publishers) or "none"))
    return Plan(subsystem, steps=tuple(steps), evidence=tuple(evidence), warnings=tuple(warnings))
