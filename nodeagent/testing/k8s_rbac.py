"""RBAC evaluation over a manifest of ClusterRoles, Roles and their bindings, as the API server's RBAC
authorizer does it, plus the node authorizer for kubelet identities.

A request is allowed when some binding whose subject matches the user (a ServiceAccount, a User or a
Group) refers to a role with a rule that matches the verb, API group, resource (``nodes/status`` for a
subresource), and resource name when the rule lists names. A RoleBinding grants only in its namespace.
The group ``system:masters`` is allowed everything. A user in ``system:nodes`` named
``system:node:<name>`` gets what the node authorizer gives a kubelet for Nodes: read every Node, and
update and patch only its own Node and its status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    """With the subresource: ``nodes/status``."""
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    resource_names: frozenset[str]

    def allows(self, req: Request) -> bool:
        return (
            ("*" in self.api_groups or req.group in self.api_groups)
            and ("*" in self.resources or req.resource in self.resources)
            and ("*" in self.verbs or req.verb in self.verbs)
            and (not self.resource_names or req.name in self.resource_names)
        )


@dataclass(frozen=True)
class Binding:
    role: tuple[str, str]
    """(kind, name); kind Role resolves in the binding's namespace."""
    namespace: str
    """Empty for a ClusterRoleBinding."""
    subjects: tuple[tuple[str, str, str], ...]
    """(kind, name, namespace)."""

    def matches(self, user: User) -> bool:
        for kind, name, ns in self.subjects:
            if kind == "ServiceAccount" and user.name == f"system:serviceaccount:{ns}:{name}":
                return True
            if kind == "User" and user.name == name:
                return True
            if kind == "Group" and name in user.groups:
                return True
        return False


class Authorizer:
    def __init__(self, documents: Iterable[Any]) -> None:
        self.cluster_roles: dict[str, tuple[Rule, ...]] = {}
        self.roles: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self.bindings: list[Binding] = []
        for doc in documents:
            if not isinstance(doc, dict):
                continue
            kind, meta = doc.get("kind"), doc.get("metadata") or {}
            if kind in ("ClusterRole", "Role"):
                rules = tuple(_rule(r) for r in doc.get("rules") or ())
                if kind == "ClusterRole":
                    self.cluster_roles[meta["name"]] = rules
                else:
                    self.roles[(meta.get("namespace", "default"), meta["name"])] = rules
            elif kind in ("ClusterRoleBinding", "RoleBinding"):
                ref = doc["roleRef"]
                subjects = tuple((s["kind"], s["name"], s.get("namespace", "")) for s in doc.get("subjects") or ())
                ns = meta.get("namespace", "default") if kind == "RoleBinding" else ""
                self.bindings.append(Binding((ref["kind"], ref["name"]), ns, subjects))

    @classmethod
    def from_file(cls, path: str | Path) -> Authorizer:
        with Path(path).open(encoding="utf-8") as f:
            return cls(list(yaml.safe_load_all(f)))

    def _rules(self, binding: Binding) -> tuple[Rule, ...]:
        kind, name = binding.role
        if kind == "ClusterRole":
            return self.cluster_roles.get(name, ())
        return self.roles.get((binding.namespace, name), ())

    def allowed(self, user: User, req: Request) -> bool:
        if "system:masters" in user.groups:
            return True
        if "system:nodes" in user.groups and user.name.startswith("system:node:") and _node_allows(user, req):
            return True
        for binding in self.bindings:
            if binding.namespace and binding.namespace != req.namespace:
                continue
            if binding.matches(user) and any(rule.allows(req) for rule in self._rules(binding)):
                return True
        return False


def _node_allows(user: User, req: Request) -> bool:
    node = user.name.removeprefix("system:node:")
    if req.group != "" or req.resource not in ("nodes", "nodes/status"):
        return False
    if req.verb in ("get", "list", "watch"):
        return True
    return req.verb in ("update", "patch") and req.name == node


def _rule(raw: dict[str, Any]) -> Rule:
    return Rule(
        api_groups=frozenset(raw.get("apiGroups") or ()),
        resources=frozenset(raw.get("resources") or ()),
        verbs=frozenset(raw.get("verbs") or ()),
        resource_names=frozenset(raw.get("resourceNames") or ()),
    )


def forbidden_message(user: User, req: Request) -> str:
    """The API server's 403 message (NewForbidden + forbiddenMessage), naming verb, resource, group, scope."""
    resource = req.resource.partition("/")[0]
    qualified = f"{resource}.{req.group}" if req.group else resource
    target = f'{qualified} "{req.name}"' if req.name else qualified
    node = user.name.removeprefix("system:node:")
    if node != user.name and resource == "nodes" and req.verb in ("update", "patch") and not req.group:
        # the Node authorizer lets it through; the NodeRestriction admission plugin refuses
        return f'{target} is forbidden: node "{node}" is not allowed to modify node "{req.name}"'
    scope = f'in the namespace "{req.namespace}"' if req.namespace else "at the cluster scope"
    return (
        f'{target} is forbidden: User "{user.name}" cannot {req.verb} resource "{req.resource}"'
        f' in API group "{req.group}" {scope}'
    )
