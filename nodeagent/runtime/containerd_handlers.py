"""The nvidia runtime's handlers in one containerd document, and what an edit may not lose.

``add_runtime``/``remove_runtime`` edit a tomlkit document in place (options copied from the default
runtime, CDI annotations, a default the agent marks as its own); ``satisfied`` asks whether an effective
CRI table already has every handler; ``effective_problems`` lists what the node would lose if an edit
became containerd's effective config. Pure; ``containerd.py`` plans with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tomlkit.toml_document import TOMLDocument

from nodeagent.runtime import tomldoc
from nodeagent.runtime.containerd_config import containerd_keys, cri_keys, runtimes_keys
from nodeagent.runtime.engine import CDI_ANNOTATIONS, RuntimeSpec

DEFAULT_RUNC: dict[str, Any] = {"runtime_type": "io.containerd.runc.v2"}


def pick_template(
    cri: Mapping[str, Any] | None, name: str, ours: frozenset[str] = frozenset()
) -> tuple[str, Mapping[str, Any]] | None:
    """The runtime whose options the new one copies: the default (unless nvidia*), then runc, then crun."""
    if not cri:
        return None
    ctd = cri.get("containerd") or {}
    runtimes = ctd.get("runtimes") or {}
    for cand in (ctd.get("default_runtime_name") or "runc", "runc", "crun"):
        if (
            cand
            and cand != name
            and cand not in ours
            and not cand.startswith("nvidia")
            and isinstance(runtimes.get(cand), Mapping)
        ):
            return cand, runtimes[cand]
    return None


def _runtime_type_of(table: Mapping[str, Any] | None) -> str:
    """A template's runtime_type; empty or missing means containerd ignores BinaryName: use runc v2."""
    rtype = tomldoc.plain((table or {}).get("runtime_type"))
    return rtype if isinstance(rtype, str) and rtype else DEFAULT_RUNC["runtime_type"]


def _add_handler(
    doc: TOMLDocument, version: int, name: str, binary: str, *, cri: Mapping[str, Any] | None, ours: frozenset[str]
) -> str:
    runtimes = tomldoc.ensure_table(doc, runtimes_keys(version), holder=True)
    copied = "existing entry kept"
    found = pick_template(cri, name, ours)
    if name in runtimes:
        entry = runtimes[name]
        if not tomldoc.plain(entry.get("runtime_type")):
            tomldoc.set_value(entry, "runtime_type", _runtime_type_of(found[1] if found else None))
    else:
        if found is None:
            source: Any = DEFAULT_RUNC
            copied = "no runtime to copy options from: io.containerd.runc.v2 defaults"
        else:
            same_doc = tomldoc.get_in(doc, (*runtimes_keys(version), found[0]))
            same = same_doc is not None and tomldoc.plain(same_doc) == tomldoc.plain(found[1])
            source = same_doc if same else found[1]
            copied = f"options copied from runtime {found[0]!r}"
        table = tomldoc.copy_table(source)
        if not tomldoc.plain(table.get("runtime_type")):
            if "runtime_type" in table:
                copied += " (its empty runtime_type, which makes containerd ignore BinaryName, became runc v2)"
                tomldoc.set_value(table, "runtime_type", DEFAULT_RUNC["runtime_type"])
            else:
                table.add("runtime_type", DEFAULT_RUNC["runtime_type"])
        tomldoc.append(runtimes, name, table)
        entry = runtimes[name]
    annotations = tomldoc.plain(entry.get("container_annotations"))
    if not isinstance(annotations, list) or any(a not in annotations for a in CDI_ANNOTATIONS):
        have = [a for a in annotations if a not in CDI_ANNOTATIONS] if isinstance(annotations, list) else []
        tomldoc.set_value(entry, "container_annotations", [*have, *CDI_ANNOTATIONS])
    options = tomldoc.ensure_table(entry, ("options",))
    tomldoc.set_value(options, "BinaryName", binary)
    if version == 1 or tomldoc.plain(entry.get("runtime_type")) == "io.containerd.runtime.v1.linux":
        # the v1 shim reads Runtime; nvidia-ctk sets it on every version 1 config (runc v2 ignores it)
        tomldoc.set_value(options, "Runtime", binary)
    return copied


OWN_DEFAULT = "# nodeagent: runtime.set_as_default"
"""Comment on a ``default_runtime_name`` the agent wrote: with set_as_default false it takes that one back."""


def own_default(doc: Mapping[str, Any], version: int, spec: RuntimeSpec) -> bool:
    """Whether ``doc`` sets one of our handlers as the default with the agent's mark on the line.

    Only the mark counts, also in the agent's own drop-in: on containerd < 2.0 that drop-in carries a
    copy of the main file's CRI table, whose default someone else may have set.
    """
    ctd = tomldoc.get_in(doc, containerd_keys(version))
    item = ctd.get("default_runtime_name") if isinstance(ctd, Mapping) else None
    if tomldoc.plain(item) not in spec.handler_names():
        return False
    return OWN_DEFAULT in str(getattr(getattr(item, "trivia", None), "comment", ""))


def add_runtime(
    doc: TOMLDocument, version: int, spec: RuntimeSpec, effective_cri: Mapping[str, Any] | None = None
) -> str:
    """Add or update the runtime's handlers in ``doc`` (in place); returns where their options came from."""
    cri = effective_cri if effective_cri is not None else tomldoc.plain(tomldoc.get_in(doc, cri_keys(version)))
    ours = spec.handler_names()
    copied = ""
    for name, binary in spec.handlers():
        said = _add_handler(doc, version, name, binary, cri=cri, ours=ours)
        copied = copied or f"handlers {', '.join(sorted(ours))}: {said}"
    if spec.set_as_default:
        previous = ((cri or {}).get("containerd") or {}).get("default_runtime_name") or "runc"
        ctd = tomldoc.ensure_table(doc, containerd_keys(version))
        if tomldoc.set_value(ctd, "default_runtime_name", spec.name) and previous != spec.name:
            copied += f"; default runtime {previous!r} -> {spec.name!r} (the original is kept for revert)"
            ctd["default_runtime_name"].comment(OWN_DEFAULT.removeprefix("# "))
    if spec.enable_cdi:
        tomldoc.set_value(tomldoc.ensure_table(doc, cri_keys(version)), "enable_cdi", True)
    return copied


def remove_runtime(doc: TOMLDocument, version: int, spec: RuntimeSpec) -> bool:
    """Take the handlers (and a default naming one) out of ``doc``; True when something changed."""
    changed = False
    for name in sorted(spec.handler_names()):
        changed = tomldoc.delete(doc, (*runtimes_keys(version), name)) or changed
    ctd = tomldoc.get_in(doc, containerd_keys(version))
    if ctd is not None and tomldoc.plain(ctd.get("default_runtime_name")) in spec.handler_names():
        del ctd["default_runtime_name"]
        changed = True
    return changed


def satisfied(cri: Mapping[str, Any] | None, spec: RuntimeSpec) -> bool:
    """Whether an effective CRI table already has every handler as asked."""
    if not cri:
        return False
    ctd = cri.get("containerd") or {}
    for name, binary in spec.handlers():
        entry = (ctd.get("runtimes") or {}).get(name)
        if not isinstance(entry, Mapping) or not entry.get("runtime_type"):
            return False
        if (entry.get("options") or {}).get("BinaryName") != binary:
            return False
        annotations = entry.get("container_annotations")
        if not isinstance(annotations, list) or any(a not in annotations for a in CDI_ANNOTATIONS):
            return False
    if spec.set_as_default and ctd.get("default_runtime_name") != spec.name:
        return False
    return not (spec.enable_cdi and cri.get("enable_cdi") is not True)


def runtimes_of(cri: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not cri:
        return {}
    return ((cri.get("containerd") or {}).get("runtimes")) or {}


def effective_problems(
    before: Mapping[str, Any], after: Mapping[str, Any], spec: RuntimeSpec, *, deep: bool, release: bool = False
) -> list[str]:
    """What the node would lose (or lack) if ``after`` became containerd's effective CRI table.

    ``release``: the agent takes back a default it set itself, so the default may change to another one.
    """
    problems: list[str] = []
    if not satisfied(after, spec):
        problems.append(f"runtime {spec.name!r} would not be in the effective config")
    rt_b, rt_a = runtimes_of(before), runtimes_of(after)
    if not rt_b and not deep:
        rt_b = {"runc": DEFAULT_RUNC}
    for name, table in rt_b.items():
        if name in spec.handler_names():
            continue
        if name not in rt_a:
            problems.append(f"runtime {name!r} would disappear")
        elif not deep and rt_a[name] != table:
            problems.append(f"runtime {name!r} would change")
    ctd_b = dict(before.get("containerd") or {})
    ctd_a = dict(after.get("containerd") or {})
    want_default = spec.name if spec.set_as_default else ctd_b.get("default_runtime_name")
    if release and ctd_a.get("default_runtime_name") not in spec.handler_names():
        want_default = ctd_a.get("default_runtime_name")
    if ctd_a.get("default_runtime_name") != want_default:
        problems.append(f"default runtime would be {ctd_a.get('default_runtime_name')!r}, not {want_default!r}")
    for d in (ctd_a, ctd_b):
        d.pop("runtimes", None)
        d.pop("default_runtime_name", None)
    rest_b = {k: v for k, v in before.items() if k not in ("containerd", "enable_cdi")}
    rest_a = {k: v for k, v in after.items() if k not in ("containerd", "enable_cdi")}
    lost = sorted(
        {k for k in rest_b if rest_a.get(k) != rest_b[k]}
        | {f"containerd.{k}" for k in ctd_b if ctd_a.get(k) != ctd_b[k]}
    )
    if lost:
        problems.append("CRI settings would change: " + ", ".join(lost[:8]))
    if not spec.enable_cdi and before.get("enable_cdi") != after.get("enable_cdi"):
        problems.append("enable_cdi would change")
    return problems
