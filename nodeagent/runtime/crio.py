"""CRI-O: a drop-in ``crio.conf.d/99-nvidia.conf`` with ``[crio.runtime.runtimes.<name>]``.

CRI-O reads ``crio.conf`` and then every regular file in ``crio.conf.d`` in lexical order, later files
winning key by key. The handler copies the default runtime's table (monitor_path, monitor_cgroup,
runtime_root, ...) so that conmon and the state root stay the ones the node uses, then sets
``runtime_path`` and ``runtime_type = "oci"``. ``default_runtime`` is written only when asked: with
nvidia as the default every pod runs through nvidia's runtime (pods stuck Terminating, exec denied).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tomlkit

from nodeagent.runtime import tomldoc
from nodeagent.runtime.engine import Edit, Files, RuntimeSpec

DROPIN_NAME = "99-nvidia.conf"
HEADER = "# Managed by nodeagent (runtime subsystem); `nodeagent revert` removes it.\n"
_NOT_COPIED = frozenset({"runtime_path", "runtime_type", "inherit_default_runtime", "runtime_config_path"})


def effective(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for doc in docs:
        tomldoc.merge_deep(merged, doc)
    return merged


def default_runtime(eff: Mapping[str, Any]) -> str:
    """The default handler: ``default_runtime``, else crun (CRI-O >= 1.31) or runc, whichever is defined."""
    rt = tomldoc.get_in(eff, ("crio", "runtime")) or {}
    if rt.get("default_runtime"):
        return str(rt["default_runtime"])
    runtimes = rt.get("runtimes") or {}
    return "crun" if "crun" in runtimes or "runc" not in runtimes else "runc"


def handler_table(eff: Mapping[str, Any], spec: RuntimeSpec) -> tuple[dict[str, Any], str]:
    """The new handler's keys, and the runtime they were copied from."""
    source = default_runtime(eff)
    if source == spec.name or source.startswith("nvidia"):
        source = "crun" if tomldoc.get_in(eff, ("crio", "runtime", "runtimes", "crun")) else "runc"
    copied = tomldoc.get_in(eff, ("crio", "runtime", "runtimes", source)) or {}
    table: dict[str, Any] = {"runtime_path": spec.path, "runtime_type": "oci"}
    table.update({k: v for k, v in copied.items() if k not in _NOT_COPIED})
    return table, source


@dataclass
class Crio:
    config_path: str = "/etc/crio/crio.conf"
    files: Files = field(default_factory=dict)
    listing: tuple[str, ...] = ()
    """Entries of the crio.conf.d directory."""
    name: str = "crio"

    @property
    def dropin_dir(self) -> str:
        return posixpath.join(posixpath.dirname(self.config_path), "crio.conf.d")

    @property
    def target(self) -> str:
        return posixpath.join(self.dropin_dir, DROPIN_NAME)

    def order(self) -> list[str]:
        return [self.config_path, *(posixpath.join(self.dropin_dir, n) for n in sorted(self.listing))]

    def watched(self) -> tuple[str, ...]:
        return (self.config_path, self.target)

    def _effective(self, *, without_target: bool) -> dict[str, Any]:
        docs = []
        for path in self.order():
            if without_target and path == self.target:
                continue
            data = self.files.get(path)
            if data is not None:
                docs.append(tomldoc.parse(path, data).unwrap())
        return effective(docs)

    def desired(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        others = self._effective(without_target=True)
        current_default = tomldoc.get_in(others, ("crio", "runtime", "default_runtime"))
        edit.evidence.append(f"CRI-O default runtime: {default_runtime(others)!r}")
        edit.evidence.append("CRI-O always has CDI (cdi_spec_dirs); enable_cdi needs no change")
        if current_default == spec.name and not spec.set_as_default:
            edit.warnings.append(
                f'default_runtime = "{spec.name}" is set in CRI-O\'s config (left by older tooling?): every pod '
                "then runs through nvidia's runtime, which leaves pods stuck Terminating and denies exec; "
                "remove it unless that is intended"
            )
        data = self.files.get(self.target)
        have = tomldoc.get_in(others, ("crio", "runtime", "runtimes", spec.name)) or {}
        if (
            data is None
            and have.get("runtime_path") == spec.path
            and (not spec.set_as_default or current_default == spec.name)
        ):
            edit.evidence.append(f"handler {spec.name!r} already configured in CRI-O's config files")
            return edit
        doc = tomldoc.parse(self.target, data) if data is not None else tomlkit.parse(HEADER)
        table, source = handler_table(others, spec)
        runtimes = tomldoc.ensure_table(doc, ("crio", "runtime", "runtimes"), holder=True)
        if spec.name in runtimes:
            entry = runtimes[spec.name]
            tomldoc.set_value(entry, "runtime_path", spec.path)
            if "runtime_type" not in entry:
                tomldoc.set_value(entry, "runtime_type", "oci")
            edit.evidence.append(f"handler {spec.name!r} already in {self.target}: binary path ensured")
        else:
            tomldoc.append(runtimes, spec.name, tomldoc.copy_table(table))
            edit.evidence.append(f"handler {spec.name!r}: monitor settings copied from {source!r}")
        if spec.set_as_default:
            tomldoc.set_value(tomldoc.ensure_table(doc, ("crio", "runtime")), "default_runtime", spec.name)
            edit.evidence.append(
                f"default runtime {default_runtime(others)!r} -> {spec.name!r} (removing the drop-in restores it)"
            )
        new = tomldoc.dump(doc)
        verb = "create" if data is None else "edit"
        edit.put(self.target, data, new, f"{verb} drop-in {self.target}: add handler {spec.name!r}")
        return edit

    def removed(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        data = self.files.get(self.target)
        if data is not None:
            edit.put(self.target, data, None, f"remove drop-in {self.target}")
        return edit
