"""CRI-O: a drop-in ``crio.conf.d/99-nvidia.conf`` with ``[crio.runtime.runtimes.<name>]``.

CRI-O reads ``crio.conf`` and then every regular file in ``crio.conf.d`` in lexical order, later files
winning key by key. The handler copies the default runtime's table (monitor_path, monitor_cgroup,
runtime_root, ...) so that conmon and the state root stay the ones the node uses, then sets
``runtime_path`` and ``runtime_type = "oci"``. ``default_runtime`` is written only when asked: with
nvidia as the default every pod runs through nvidia's runtime (pods stuck Terminating, exec denied).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import tomlkit

from nodeagent.errors import ConfigError
from nodeagent.runtime import tomldoc
from nodeagent.runtime.detect import Detected
from nodeagent.runtime.engine import Edit, Effect, EngineKind, Files, NodeConfig, Reader, RuntimeSpec, want_type


def check_shape(path: str, doc: Mapping[str, Any]) -> None:
    """Refuse, naming file and key, a value of the wrong type where the agent reads or writes."""
    crio = doc.get("crio")
    if crio is None:
        return
    want_type(path, crio, Mapping, "crio", "a table")
    runtime = crio.get("runtime")
    if runtime is None:
        return
    want_type(path, runtime, Mapping, "crio.runtime", "a table")
    if "default_runtime" in runtime:
        want_type(path, runtime["default_runtime"], str, "crio.runtime.default_runtime", "a string")
    runtimes = runtime.get("runtimes")
    if runtimes is None:
        return
    want_type(path, runtimes, Mapping, "crio.runtime.runtimes", "a table")
    for name, entry in runtimes.items():
        want_type(path, entry, Mapping, f"crio.runtime.runtimes.{name}", "a table")
        for key in ("runtime_path", "runtime_type"):
            if key in entry:
                want_type(path, entry[key], str, f"crio.runtime.runtimes.{name}.{key}", "a string")


def _parse(path: str, data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = tomldoc.parse(path, data).unwrap()
    check_shape(path, doc)
    return doc


def _handlers_ok(eff: Mapping[str, Any], spec: RuntimeSpec) -> bool:
    runtimes = tomldoc.get_in(eff, ("crio", "runtime", "runtimes")) or {}
    return all((runtimes.get(name) or {}).get("runtime_path") == binary for name, binary in spec.handlers())


def _last_setting(docs: Sequence[tuple[str, Mapping[str, Any]]], keys: Sequence[str]) -> str:
    """The last file (in load order) that sets ``keys``: the one whose value CRI-O uses."""
    return next((path for path, doc in reversed(docs) if tomldoc.get_in(doc, keys) is not None), "")


DROPIN_NAME = "99-nvidia.conf"
HEADER = "# Managed by nodeagent (runtime subsystem); `nodeagent revert` removes it.\n"
_NOT_COPIED = frozenset({"runtime_path", "runtime_type", "inherit_default_runtime", "runtime_config_path"})


def effective(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
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


def handler_table(
    eff: Mapping[str, Any], spec: RuntimeSpec, ours: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], str]:
    """The new handler's keys, and the runtime they were copied from."""
    source = default_runtime(eff)
    if source == spec.name or source in ours or source.startswith("nvidia"):
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
        return dropin_dir_of(self.config_path)

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
                docs.append(_parse(path, data))
        return effective(docs)

    def _docs(self, overrides: Files) -> list[tuple[str, dict[str, Any]]]:
        """(path, plain doc) in CRI-O's load order, ``overrides`` replacing what is on disk."""
        out = []
        names = set(self.listing) | {
            posixpath.basename(p) for p in overrides if posixpath.dirname(p) == self.dropin_dir
        }
        for path in [self.config_path, *(posixpath.join(self.dropin_dir, n) for n in sorted(names))]:
            data = overrides[path] if path in overrides else self.files.get(path)
            if data is not None:
                out.append((path, _parse(path, data)))
        return out

    def desired(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        others = self._effective(without_target=True)
        edit.evidence.append(f"CRI-O default runtime: {default_runtime(others)!r}")
        edit.evidence.append("CRI-O always has CDI (cdi_spec_dirs); enable_cdi needs no change")
        writes: dict[str, bytes | None] = {}
        data = self.files.get(self.target)
        now = effective(d for _, d in self._docs({}))
        if (
            data is not None
            or not _handlers_ok(now, spec)
            or (spec.set_as_default and default_runtime(now) != spec.name)
        ):
            writes[self.target] = self._dropin(spec, data, others, edit)
        if not spec.set_as_default:
            self._take_default_back(spec, writes, edit)
        for path, new in writes.items():
            old = self.files.get(path)
            handlers = ", ".join(sorted(spec.handler_names()))
            summary = (
                f"{'create' if old is None else 'edit'} drop-in {path}: add handlers {handlers}"
                if path == self.target
                else f"edit {path}: remove default_runtime naming nvidia's runtime (the trap nvidia-ctk leaves)"
            )
            edit.put(path, old, new, summary)
        after_docs = self._docs(edit.writes)
        after = effective(d for _, d in after_docs)
        for name, binary in spec.handlers():
            have = tomldoc.get_in(after, ("crio", "runtime", "runtimes", name, "runtime_path"))
            if have != binary:
                setter = _last_setting(after_docs, ("crio", "runtime", "runtimes", name, "runtime_path"))
                raise ConfigError(
                    f"handler {name!r} would run {have!r}, not {binary!r}: {setter} is loaded after "
                    f"{self.target} and overrides it (a leftover of nvidia-ctk?); remove that file, or set "
                    f"runtime.runtime_path to the binary it names",
                    source=setter or self.target,
                    key=f"crio.runtime.runtimes.{name}.runtime_path",
                )
        before_default, after_default = default_runtime(now), default_runtime(after)
        if before_default != after_default:
            changed_in = next((p for p in edit.writes if p != self.target), self.target)
            edit.effects.append(Effect("default-runtime", before_default, after_default, changed_in))
        if not edit.writes:
            edit.evidence.append("every handler already configured in CRI-O's effective config")
        return edit

    def _dropin(self, spec: RuntimeSpec, data: bytes | None, others: Mapping[str, Any], edit: Edit) -> bytes:
        doc = tomldoc.parse(self.target, data) if data is not None else tomlkit.parse(HEADER)
        runtimes = tomldoc.ensure_table(doc, ("crio", "runtime", "runtimes"), holder=True)
        for name, binary in spec.handlers():
            if name in runtimes:
                entry = runtimes[name]
                tomldoc.set_value(entry, "runtime_path", binary)
                if not tomldoc.plain(entry.get("runtime_type")):
                    tomldoc.set_value(entry, "runtime_type", "oci")
                continue
            table, source = handler_table(others, replace(spec, name=name, path=binary), spec.handler_names())
            tomldoc.append(runtimes, name, tomldoc.copy_table(table))
            if name == spec.name:
                edit.evidence.append(f"handlers: monitor settings copied from {source!r}")
        if spec.set_as_default:
            tomldoc.set_value(tomldoc.ensure_table(doc, ("crio", "runtime")), "default_runtime", spec.name)
            edit.evidence.append(
                f"default runtime {default_runtime(others)!r} -> {spec.name!r} (removing the drop-in restores it)"
            )
        return tomldoc.dump(doc)

    def _take_default_back(self, spec: RuntimeSpec, writes: dict[str, bytes | None], edit: Edit) -> None:
        """With set_as_default = false, no file may leave nvidia's runtime as CRI-O's default."""
        for _ in range(len(self.listing) + 1):
            docs = self._docs(writes)
            setter = _last_setting(docs, ("crio", "runtime", "default_runtime"))
            value = tomldoc.get_in(dict(docs).get(setter, {}), ("crio", "runtime", "default_runtime"))
            if not setter or value not in spec.handler_names():
                return
            edit.warnings.append(
                f'default_runtime = "{value}" is set in {setter} (left by nvidia-ctk or the GPU Operator?): every '
                "pod then runs through nvidia's runtime, which leaves pods stuck Terminating and denies exec; "
                "with runtime.set_as_default = false the plan removes it (revert puts it back)"
            )
            current = writes[setter] if setter in writes else self.files.get(setter)
            doc = tomldoc.parse(setter, current)
            tomldoc.delete(doc, ("crio", "runtime", "default_runtime"))
            writes[setter] = tomldoc.dump(doc)

    def removed(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        data = self.files.get(self.target)
        if data is not None:
            edit.put(self.target, data, None, f"remove drop-in {self.target}")
        return edit


def dropin_dir_of(config_path: str) -> str:
    """``crio.conf.d`` beside the main file: CRI-O reads every regular file in it after ``crio.conf``."""
    return posixpath.join(posixpath.dirname(config_path), "crio.conf.d")


class CrioKind(EngineKind):
    """CRI-O: ``crio.conf`` and its ``crio.conf.d`` drop-ins; SIGHUP reloads them."""

    name = "crio"

    def gather(self, detected: Detected, reader: Reader) -> None:
        reader.read(detected.config_path)
        dropins = dropin_dir_of(detected.config_path)
        for name in reader.listdir(dropins):
            reader.read(posixpath.join(dropins, name))

    def build(self, detected: Detected, node: NodeConfig) -> Crio:
        listing = tuple(node.listings.get(dropin_dir_of(detected.config_path), ()))
        return Crio(detected.config_path, node.files, listing)


KIND = CrioKind()
