"""containerd: add the runtime to the file containerd really reads, at that file's config version.

Decisions come from the files on disk: the main file and what it imports (breadth-first, globs in
lexical order, relative paths against the importing file, as containerd loads them). Modes:

- in-place: no drop-in directory is imported; the main file is edited with tomlkit (style kept);
- drop-in: the main file imports a directory glob (k0s: always ``/etc/k0s/containerd.d``); the agent owns
  ``99-nvidia.toml`` there. containerd < 2.0 replaces a whole plugin table from a later file
  (containerd's CRI plugin docs), so there the drop-in carries a copy of the effective CRI table plus the runtime;
  from 2.0 plugin tables are deep-merged and the drop-in holds only what is added;
- template: k3s/RKE2 regenerate config.toml from a Go template at every start, so the template carries
  the runtime (pure TOML, or ``{{ template "base" . }}`` followed by TOML); microk8s's
  containerd-template.toml is TOML with ${VARS} and is edited in place.

Before anything is returned, the effective config (containerd's own merge rules) is computed for the
files as they would be, and the edit is refused if any runtime or CRI setting the node had would be lost.

How containerd reads its files (versions, imports, merge rules, templates) is ``containerd_config.py``;
the handler edits on one document and the loss check are ``containerd_handlers.py``.
"""

from __future__ import annotations

import copy
import fnmatch
import posixpath
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import tomlkit
from tomlkit.toml_document import TOMLDocument

from nodeagent.errors import ConfigError
from nodeagent.runtime import tomldoc
from nodeagent.runtime.containerd_config import (
    CRI_PLUGIN,
    ENABLE_CDI_GONE_FROM,
    cdi_builtin,
    cdi_turned_off,
    check_shape,
    config_version,
    containerd_keys,
    cri_keys,
    deep_merge,
    effective_cri_keys,
    expand,
    import_patterns,
    is_glob,
    join_template,
    load_order,
    major_minor,
    merge_configs,
    runtimes_keys,
    split_template,
    with_dirs,
)
from nodeagent.runtime.containerd_handlers import (
    DEFAULT_RUNC,
    add_runtime,
    effective_problems,
    own_default,
    remove_runtime,
    runtimes_of,
    satisfied,
)
from nodeagent.runtime.detect import Detected
from nodeagent.runtime.engine import BOM, Edit, Effect, EngineKind, Files, NodeConfig, Reader, RuntimeSpec, decode

DROPIN_NAME = "99-nvidia.toml"
DROPIN_HEADER = (
    "# Managed by nodeagent (runtime subsystem); `nodeagent revert` removes it.\n"
    "# containerd < 2.0 replaces a whole plugin table from a drop-in, so this file carries a copy of\n"
    "# the effective CRI plugin table (from {source}) plus the runtime it adds.\n"
)
DROPIN_HEADER_MERGE = "# Managed by nodeagent (runtime subsystem); `nodeagent revert` removes it.\n"
MAX_IMPORT_FILES = 4096
"""Files read through imports before the agent refuses (by name) instead of checking less."""


@dataclass(frozen=True)
class Layout:
    """Where containerd's config lives on this node (from detect.py) and what was read from it."""

    main: str
    distribution: str = "plain"
    dropin_dir: str = ""
    """Forced drop-in directory (k0s); otherwise taken from the main file's imports."""
    template: str = ""
    """``go`` (k3s/RKE2 config*.toml.tmpl) or ``vars`` (microk8s); empty for a plain config file."""
    generated: str = ""
    """The file the distribution generates from the template (read for the effective config)."""


@dataclass
class Containerd:
    layout: Layout
    files: Files
    listings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    version: str = ""
    dump: bytes | None = None
    name: str = "containerd"

    def watched(self) -> tuple[str, ...]:
        paths = [self.layout.main]
        target = self._dropin_target(self._docs(), quiet=True)
        if target:
            paths.append(target)
        if self.layout.generated:
            paths.append(self.layout.generated)
        return tuple(dict.fromkeys(paths))

    # -------------------------------------------------------------------------- reading

    def _parse(self, path: str) -> TOMLDocument:
        return tomldoc.parse(path, self.files.get(path))

    def _docs(self, overrides: Files | None = None) -> dict[str, dict[str, Any]]:
        """Plain docs of every file present (``overrides`` replace the read bytes)."""
        files = dict(self.files)
        files.update(overrides or {})
        docs: dict[str, dict[str, Any]] = {}
        for path, data in files.items():
            if data is None or path == self.layout.generated:
                continue
            if path == self.layout.main and self.layout.template == "go":
                text, _ = split_template(path, decode(path, data))
                docs[path] = tomldoc.parse(path, text.encode()).unwrap()
            else:
                docs[path] = tomldoc.parse(path, data).unwrap()
            check_shape(path, docs[path])
        return docs

    def _dropin_target(self, docs: Mapping[str, Mapping[str, Any]], *, quiet: bool = False) -> str:
        if self.layout.template:
            return ""
        main = docs.get(self.layout.main, {})
        try:
            if config_version(main) == 1:
                return ""
        except ValueError:
            return ""
        if self.layout.dropin_dir:
            return posixpath.join(self.layout.dropin_dir, DROPIN_NAME)
        globs = [p for p in import_patterns(self.layout.main, main) if is_glob(p)] if main else []
        for pattern in reversed(globs):
            directory, base = posixpath.split(pattern)
            if is_glob(directory):
                continue
            for name in (DROPIN_NAME, "99-nvidia" + base.lstrip("*"), "99-nvidia"):
                if fnmatch.fnmatchcase(name, base):
                    return posixpath.join(directory, name)
        return ""

    # -------------------------------------------------------------------------- planning

    def desired(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        spec = self._cdi(spec, edit)
        if self.layout.template == "go":
            return self._template(spec, edit)
        docs = self._docs()
        main_doc = docs.get(self.layout.main, {})
        version = self._version_of(main_doc, self.layout.main)
        deep = deep_merge(self.version)
        edit.evidence.append(f"config version {version} (from {self.layout.main}), CRI plugin {CRI_PLUGIN[version]!r}")
        edit.evidence.append(
            f"containerd {self.version or 'version unknown'}: "
            + ("plugin tables deep-merged across imports" if deep else "a drop-in replaces whole plugin tables")
        )
        target = self._dropin_target(docs)
        if target:
            self._dropin(spec=spec, edit=edit, docs=docs, version=version, deep=deep, target=target)
        else:
            self._in_place(spec, edit, docs, version, deep)
        if not spec.set_as_default:
            extra = [self.layout.dropin_dir] if self.layout.dropin_dir else []
            order = with_dirs(load_order(self.layout.main, docs, self.listings), extra, docs, self.listings)
            now = self._effective_cri(docs, order, version, deep) or {}
            default = (now.get("containerd") or {}).get("default_runtime_name")
            taken_back = any(
                e.setting == "default-runtime" and e.after not in spec.handler_names() for e in edit.effects
            )
            if default in spec.handler_names() and not taken_back:
                edit.warnings.append(_DEFAULT_IS_OURS.format(name=default))
        return edit

    def _cdi(self, spec: RuntimeSpec, edit: Edit) -> RuntimeSpec:
        """The spec as this containerd needs it: from 2.2 CDI is always on, so ``enable_cdi`` is not asked for
        (and not written); a key already in the files stays as it is. containerd 2.2 and 2.3 still honour an
        ``enable_cdi = false`` another tool wrote: there the key is set as before."""
        if not spec.enable_cdi:
            return spec
        builtin = cdi_builtin(self.version)
        if builtin is None:
            edit.evidence.append(
                "containerd version unknown: enable_cdi = true is written, as containerd 1.7 to 2.1 need it "
                "(containerd 2.2 and later always have CDI and would not need it)"
            )
        if not builtin:
            return spec
        off = [p for p, d in self._all_docs().items() if cdi_turned_off(d)]
        if off and (major_minor(self.version) or (0, 0)) < ENABLE_CDI_GONE_FROM:
            edit.evidence.append(
                f"containerd {self.version} has CDI unless enable_cdi = false, which {', '.join(off)} sets: "
                "enable_cdi = true is written (deprecated from containerd 2.2; removing that line would do too)"
            )
            return spec
        edit.evidence.append(
            f"containerd {self.version} always has CDI (cdi_spec_dirs): enable_cdi is not written "
            "(deprecated in containerd 2.2, removed in 2.4); one already in the files is left as it is"
        )
        return replace(spec, enable_cdi=False)

    def _all_docs(self) -> dict[str, dict[str, Any]]:
        """Every file read, the distribution's generated file too."""
        docs = self._docs()
        generated = self.layout.generated
        if generated and self.files.get(generated) is not None:
            docs[generated] = tomldoc.parse(generated, self.files.get(generated)).unwrap()
        return docs

    def _version_of(self, doc: Mapping[str, Any], path: str) -> int:
        try:
            return config_version(doc) if doc else (3 if deep_merge(self.version) else 2)
        except ValueError as err:
            raise ConfigError(str(err), source=path, key="version") from None

    def _effective_cri(self, docs: Mapping[str, Mapping[str, Any]], order: list[str], version: int, deep: bool) -> Any:
        merged = merge_configs([docs[p] for p in order], deep=deep)
        return tomldoc.get_in(merged, effective_cri_keys(version, deep))

    def _options_cri(self, files_cri: Any, version: int) -> Any:
        """Where the new runtime's options are copied from: the files, or `config dump` when asked."""
        if self.dump is None:
            return files_cri
        dumped = tomldoc.parse("containerd config dump", self.dump).unwrap()
        for v in (version, 3, 2, 1):
            found = tomldoc.get_in(dumped, cri_keys(v))
            if found is not None:
                return found
        return files_cri

    def _in_place(
        self, spec: RuntimeSpec, edit: Edit, docs: dict[str, dict[str, Any]], version: int, deep: bool
    ) -> None:
        main = self.layout.main
        edit.evidence.append(f"mode in-place: {main} imports no drop-in directory")
        order = load_order(main, docs, self.listings) if main in docs else []
        before = self._effective_cri(docs, order, version, deep)
        doc = self._parse(main) if self.files.get(main) is not None else tomlkit.document()
        release = not spec.set_as_default and own_default(doc, version, spec)
        if satisfied(before, spec) and not release:
            edit.evidence.append(f"runtime {spec.name!r} already in containerd's effective config")
            return
        if release:
            del tomldoc.get_in(doc, containerd_keys(version))["default_runtime_name"]
            edit.evidence.append(_TAKEN_BACK.format(path=main))
        if not docs.get(main) and version >= 2:
            # absent, empty or comment-only: without a `version` line containerd reads the file as
            # version 1 and ignores every table keyed by the version 2/3 plugin name
            doc.add("version", version)
            doc.add(tomlkit.nl())
            edit.evidence.append(f"{main} has no settings: `version = {version}` is written so containerd reads it")
        if not deep and tomldoc.get_in(doc, runtimes_keys(version)) is None and not runtimes_of(before):
            tomldoc.append(
                tomldoc.ensure_table(doc, runtimes_keys(version), holder=True), "runc", tomldoc.copy_table(DEFAULT_RUNC)
            )
            edit.evidence.append("no runtimes table on disk: runc (containerd's default) is written with it")
        edit.evidence.append(add_runtime(doc, version, spec, self._options_cri(before, version)))
        new = tomldoc.dump(doc)
        self._check(
            spec=spec, edit=edit, docs=docs, new={main: new}, version=version, deep=deep, target="", release=release
        )
        verb = "create" if self.files.get(main) is None else "edit"
        edit.put(main, self.files.get(main), new, f"{verb} {main}: add runtime {spec.name!r} (in-place)")

    def _dropin(
        self, *, spec: RuntimeSpec, edit: Edit, docs: dict[str, dict[str, Any]], version: int, deep: bool, target: str
    ) -> None:
        main = self.layout.main
        edit.evidence.append(f"mode drop-in: {target}")
        others = {p: d for p, d in docs.items() if p != target}
        order = load_order(main, others, self.listings)
        if self.layout.dropin_dir:
            order += [p for p in expand(posixpath.join(self.layout.dropin_dir, "*.toml"), self.listings) if p in others]
            order = list(dict.fromkeys(order))
        before = self._effective_cri(others, order, version, deep)
        if satisfied(before, spec):
            edit.evidence.append(f"runtime {spec.name!r} already in containerd's effective config without the drop-in")
            return
        existing = self.files.get(target)
        foreign = existing is not None and not existing.startswith(DROPIN_HEADER_MERGE.encode())
        release = existing is not None and not spec.set_as_default and own_default(self._parse(target), version, spec)
        options_from = before
        if foreign:
            # e.g. nvidia-ctk's conf.d/99-nvidia.toml: every setting in it stays, the handlers are added
            doc = self._parse(target)
            extra = [self.layout.dropin_dir] if self.layout.dropin_dir else []
            options_from = self._effective_cri(
                docs, with_dirs(load_order(main, docs, self.listings), extra, docs, self.listings), version, deep
            )
            edit.evidence.append(f"{target} was not written by nodeagent: its settings are kept, handlers added")
        elif deep:
            doc = self._parse(target) if existing is not None else _new_dropin(DROPIN_HEADER_MERGE, version)
        else:
            source = next((p for p in reversed(order) if tomldoc.get_in(others[p], cri_keys(version)) is not None), "")
            doc = _new_dropin(DROPIN_HEADER.format(source=source or "containerd's defaults"), version)
            if source:
                cri_table = tomldoc.get_in(self._parse(source), cri_keys(version))
                tomldoc.append(
                    tomldoc.ensure_table(doc, ("plugins",), holder=True), CRI_PLUGIN[version], copy.deepcopy(cri_table)
                )
                edit.evidence.append(f"CRI plugin table copied from {source}")
            if not runtimes_of(before):
                tomldoc.append(
                    tomldoc.ensure_table(doc, runtimes_keys(version), holder=True),
                    "runc",
                    tomldoc.copy_table(DEFAULT_RUNC),
                )
                edit.evidence.append("no runtimes on disk: runc (containerd's default) is carried in the drop-in")
        if release:
            tomldoc.delete(doc, (*containerd_keys(version), "default_runtime_name"))
            edit.evidence.append(_TAKEN_BACK.format(path=target))
        edit.evidence.append(add_runtime(doc, version, spec, self._options_cri(options_from, version)))
        new = tomldoc.dump(doc)
        self._check(
            spec=spec,
            edit=edit,
            docs=docs,
            new={target: new},
            version=version,
            deep=deep,
            target=target,
            release=release,
        )
        edit.put(target, self.files.get(target), new, f"write drop-in {target}: add runtime {spec.name!r}")

    def _check(
        self,
        *,
        spec: RuntimeSpec,
        edit: Edit,
        docs: dict[str, dict[str, Any]],
        new: Mapping[str, bytes],
        version: int,
        deep: bool,
        target: str,
        release: bool = False,
    ) -> None:
        """Refuse an edit after which containerd's effective config lost something or lacks the runtime."""
        main = self.layout.main
        before_docs = dict(docs)  # as containerd reads the node now, the file about to be replaced included
        after_docs = dict(before_docs)
        for path, data in new.items():
            after_docs[path] = tomldoc.parse(path, data).unwrap()
        extra_dirs = [self.layout.dropin_dir] if self.layout.dropin_dir else []
        order_b = with_dirs(
            load_order(main, before_docs, self.listings), extra_dirs, before_docs, self.listings, target
        )
        order_a = with_dirs(
            load_order(main, after_docs, self.listings, target), extra_dirs, after_docs, self.listings, target
        )
        keys = effective_cri_keys(version, deep)
        cri_b = tomldoc.get_in(merge_configs([before_docs[p] for p in order_b], deep=deep), keys) or {}
        cri_a = tomldoc.get_in(merge_configs([after_docs[p] for p in order_a], deep=deep), keys) or {}
        where = target or main
        problems = effective_problems(cri_b, cri_a, spec, deep=deep, release=release)
        if target and target not in order_a:
            problems.insert(0, f"containerd would not load {target} (not matched by the imports of {main})")
        if problems:
            after = [p for p in order_a if order_a.index(p) > order_a.index(where)] if where in order_a else []
            hint = f"; files loaded after it: {', '.join(after)}" if after else ""
            raise ConfigError("refusing to write: " + "; ".join(problems) + hint, source=where)
        edit.evidence.append(f"effective config checked: every runtime and CRI setting kept ({len(order_a)} files)")
        default_b = (cri_b.get("containerd") or {}).get("default_runtime_name") or "runc"
        default_a = (cri_a.get("containerd") or {}).get("default_runtime_name") or "runc"
        if default_b != default_a:
            edit.effects.append(Effect("default-runtime", default_b, default_a, where))
        if cri_b.get("enable_cdi") != cri_a.get("enable_cdi"):
            edit.effects.append(Effect("cdi", cri_b.get("enable_cdi"), cri_a.get("enable_cdi"), where))

    def _template(self, spec: RuntimeSpec, edit: Edit) -> Edit:
        path, generated = self.layout.main, self.layout.generated
        gen_doc = tomldoc.parse(generated, self.files.get(generated)).unwrap() if generated else {}
        check_shape(generated, gen_doc)
        data = self.files.get(path)
        text, kept = split_template(path, decode(path, data)) if data is not None else ("", {})
        version = self._version_of(gen_doc or tomldoc.parse(path, text.encode()).unwrap(), generated or path)
        before = tomldoc.get_in(gen_doc, cri_keys(version))
        edit.evidence.append(f"template {path} regenerates {generated} at every start; config version {version}")
        if satisfied(before, spec):
            edit.evidence.append(f"runtime {spec.name!r} already in {generated}")
            return edit
        base = bool(kept) or data is None
        if base and (spec.set_as_default or spec.enable_cdi):
            edit.warnings.append(
                f"{self.layout.distribution}: the default runtime and enable_cdi cannot be added after "
                '{{ template "base" . }}; use the distribution\'s own flag (e.g. --default-runtime)'
            )
            spec = replace(spec, set_as_default=False, enable_cdi=False)
        doc = tomldoc.parse(path, text.encode())
        check_shape(path, doc.unwrap())
        in_template = tomldoc.get_in(doc.unwrap(), (*runtimes_keys(version), spec.name)) is not None
        if base and not in_template and tomldoc.get_in(before, ("containerd", "runtimes", spec.name)) is not None:
            raise ConfigError(
                f"runtime {spec.name!r} comes from the base template with another binary; appending it again "
                "would define the table twice",
                source=path,
            )
        edit.evidence.append(add_runtime(doc, version, spec, before))
        rendered = doc.as_string()
        if data is None:
            rendered = '{{ template "base" . }}\n\n' + rendered.lstrip("\n")
        new = join_template(rendered, kept).encode()
        verb = "create" if data is None else "edit"
        edit.put(path, data, new, f"{verb} template {path}: add runtime {spec.name!r}")
        return edit

    def removed(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        docs = self._docs()
        target = self._dropin_target(docs)
        if target and self.files.get(target) is not None:
            edit.put(target, self.files.get(target), None, f"remove drop-in {target}")
            return edit
        path = self.layout.main
        data = self.files.get(path)
        if data is None:
            return edit
        kept: dict[str, str] = {}
        text = decode(path, data)
        if self.layout.template == "go":
            text, kept = split_template(path, text)
        doc = tomldoc.parse(path, text.encode())
        version = self._version_of(doc.unwrap(), path)
        if remove_runtime(doc, version, spec):
            edit.put(path, data, join_template(doc.as_string(), kept).encode(), f"remove runtime {spec.name!r}")
        return edit


_DEFAULT_IS_OURS = (
    "default_runtime_name = {name!r} in containerd's effective config while runtime.set_as_default = false "
    "(left by nvidia-ctk or the GPU Operator?): every container, system ones too, runs through nvidia's "
    "runtime. It is kept, because GPU pods without a RuntimeClass may rely on it: set "
    "runtime.set_as_default = true to make that explicit, or remove the line if it is not intended"
)
_TAKEN_BACK = "{path}: default_runtime_name set by nodeagent earlier is taken back (runtime.set_as_default = false)"


def _new_dropin(header: str, version: int) -> TOMLDocument:
    doc = tomlkit.parse(header)
    doc.add("version", version)
    doc.add(tomlkit.nl())
    return doc


# ------------------------------------------------------------------------------------- on the node


class ContainerdKind(EngineKind):
    """containerd: the main file, what it imports, a distribution's drop-ins or generated file."""

    name = "containerd"
    versioned = True
    version_unknown = "containerd version unknown: the drop-in rules of containerd < 2.0 are used (safe on 2.x)"
    signal_restart = "restart = signal: containerd exits on SIGHUP and comes back only under a supervisor"
    checks_handler = True

    def gather(self, detected: Detected, reader: Reader) -> None:
        """The main file and its imports, breadth-first as containerd loads them, then drop-ins and the
        generated file; more than ``MAX_IMPORT_FILES`` is a named refusal."""
        d = detected
        pending = [d.config_path]
        while pending:
            path = pending.pop(0)
            if path in reader.files:
                continue
            if len(reader.files) >= MAX_IMPORT_FILES:
                raise ConfigError(
                    f"imports load more than {MAX_IMPORT_FILES} files (next: {path}); the agent refuses "
                    "rather than check containerd's effective config on part of it",
                    source=d.config_path,
                    key="imports",
                )
            data = reader.read(path)
            if data is None:
                continue
            for pattern in _imports_of(path, data, template=path == d.config_path and d.template == "go"):
                if is_glob(pattern):
                    reader.listdir(posixpath.dirname(pattern))
                    pending.extend(expand(pattern, reader.listings))
                else:
                    pending.append(pattern)
        if d.dropin_dir:
            for name in reader.listdir(d.dropin_dir):
                if name.endswith(".toml"):
                    reader.read(posixpath.join(d.dropin_dir, name))
        if d.generated:
            reader.read(d.generated)

    def build(self, detected: Detected, node: NodeConfig) -> Containerd:
        d = detected
        layout = Layout(d.config_path, d.distribution, d.dropin_dir, d.template, d.generated)
        return Containerd(layout, node.files, node.listings, node.version, node.dump)


def _imports_of(path: str, data: bytes, template: bool) -> list[str]:
    """Import patterns of a file; unparseable files import nothing (planning reports them)."""
    if template:
        return []
    try:
        doc = tomllib.loads(data.removeprefix(BOM).decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    try:
        return import_patterns(path, doc)
    except ConfigError:
        return []


KIND = ContainerdKind()
