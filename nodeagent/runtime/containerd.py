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
"""

from __future__ import annotations

import copy
import fnmatch
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import tomlkit
from tomlkit.toml_document import TOMLDocument

from nodeagent.errors import ConfigError
from nodeagent.runtime import tomldoc
from nodeagent.runtime.engine import CDI_ANNOTATIONS, Edit, Effect, Files, RuntimeSpec, decode, want_type

CRI_PLUGIN = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
DEFAULT_RUNC: dict[str, Any] = {"runtime_type": "io.containerd.runc.v2"}
DROPIN_NAME = "99-nvidia.toml"
DROPIN_HEADER = (
    "# Managed by nodeagent (runtime subsystem); `nodeagent revert` removes it.\n"
    "# containerd < 2.0 replaces a whole plugin table from a drop-in, so this file carries a copy of\n"
    "# the effective CRI plugin table (from {source}) plus the runtime it adds.\n"
)
DROPIN_HEADER_MERGE = "# Managed by nodeagent (runtime subsystem); `nodeagent revert` removes it.\n"
BASE_DIRECTIVE = re.compile(r"^\s*\{\{-?\s*template\s+\"base\"\s+\.\s*-?\}\}\s*$")
PLACEHOLDER = "#@nodeagent-go-template-line-{}"
_MERGED_TABLES = ("plugins", "proxy_plugins", "stream_processors", "timeouts")
_UNION_LISTS = ("imports", "required_plugins", "disabled_plugins")


KNOWN_VERSIONS = (1, 2, 3, 4)


def config_version(doc: Mapping[str, Any]) -> int:
    """1 when ``version`` is absent; 3 stands for 3 and 4 (same runtime path)."""
    v = tomldoc.plain(doc.get("version", 1))
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"version must be a positive integer, got {v!r}")
    if v not in KNOWN_VERSIONS:
        raise ValueError(f"version {v} is not a containerd config version (containerd knows 1, 2, 3 and 4)")
    return min(v, 3)


def check_shape(path: str, doc: Mapping[str, Any]) -> None:
    """Refuse, naming file and key, a value of the wrong type anywhere the agent reads or writes."""

    def want(value: Any, expected: type | tuple[type, ...], key: str, what: str) -> None:
        want_type(path, value, expected, key, what)

    if "version" in doc:
        want(doc["version"], int, "version", "a number")
    if "imports" in doc:
        want(doc["imports"], list, "imports", "an array of strings")
    if "plugins" not in doc:
        return
    want(doc["plugins"], Mapping, "plugins", "a table")
    for plugin in ("cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"):
        if plugin not in doc["plugins"]:
            continue
        base = f'plugins."{plugin}"'
        cri = doc["plugins"][plugin]
        want(cri, Mapping, base, "a table")
        if "enable_cdi" in cri:
            want(cri["enable_cdi"], bool, f"{base}.enable_cdi", "true or false")
        if "containerd" not in cri:
            continue
        ctd = cri["containerd"]
        want(ctd, Mapping, f"{base}.containerd", "a table")
        if "default_runtime_name" in ctd:
            want(ctd["default_runtime_name"], str, f"{base}.containerd.default_runtime_name", "a string")
        if "runtimes" not in ctd:
            continue
        want(ctd["runtimes"], Mapping, f"{base}.containerd.runtimes", "a table")
        for name, entry in ctd["runtimes"].items():
            key = f"{base}.containerd.runtimes.{name}"
            want(entry, Mapping, key, "a table")
            if "runtime_type" in entry:
                want(entry["runtime_type"], str, f"{key}.runtime_type", "a string")
            if "options" in entry:
                want(entry["options"], Mapping, f"{key}.options", "a table")
            if "container_annotations" in entry:
                want(entry["container_annotations"], list, f"{key}.container_annotations", "an array")


def cri_keys(version: int) -> tuple[str, ...]:
    return ("plugins", CRI_PLUGIN[version])


def containerd_keys(version: int) -> tuple[str, ...]:
    return (*cri_keys(version), "containerd")


def runtimes_keys(version: int) -> tuple[str, ...]:
    return (*containerd_keys(version), "runtimes")


def deep_merge(version: str) -> bool:
    """containerd >= 2.0 deep-merges plugin tables from imports; unknown versions get the safe rule."""
    try:
        return int(version.split(".", maxsplit=1)[0]) >= 2
    except ValueError:
        return False


# ----------------------------------------------------------------------------------- document edits


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


# ------------------------------------------------------------------------------------ effective config


def merge_configs(docs: list[Mapping[str, Any]], *, deep: bool) -> dict[str, Any]:
    """containerd's mergeConfig over files in load order: plugin tables replaced (< 2.0) or deep-merged."""
    out: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            if key in _UNION_LISTS and isinstance(value, list):
                have = out.setdefault(key, [])
                have.extend(v for v in value if v not in have)
            elif key in _MERGED_TABLES and isinstance(value, Mapping):
                have = out.setdefault(key, {})
                for pkey, pval in value.items():
                    if deep and key == "plugins" and isinstance(pval, Mapping) and isinstance(have.get(pkey), dict):
                        tomldoc.merge_deep(have[pkey], pval)
                    else:
                        have[pkey] = copy.deepcopy(pval)
            else:
                out[key] = copy.deepcopy(value)
    return out


def import_patterns(path: str, doc: Mapping[str, Any]) -> list[str]:
    imports = doc.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise ConfigError("imports must be a list of strings", source=path, key="imports")
    # containerd joins a relative path to the importing file's directory, but globs a relative pattern
    # as is, i.e. against its working directory, which is / under systemd.
    base = posixpath.dirname(path)
    return [
        posixpath.normpath(i if i.startswith("/") else posixpath.join("/" if is_glob(i) else base, i)) for i in imports
    ]


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def expand(pattern: str, listings: Mapping[str, tuple[str, ...]], extra: str = "") -> list[str]:
    """Files a pattern loads, in lexical order (filepath.Glob); ``extra`` counts as present."""
    if not is_glob(pattern):
        return [pattern]
    directory, base = posixpath.split(pattern)
    names = set(listings.get(directory, ()))
    if extra and posixpath.dirname(extra) == directory:
        names.add(posixpath.basename(extra))
    return [posixpath.join(directory, n) for n in sorted(names) if fnmatch.fnmatchcase(n, base)]


def load_order(
    main: str, docs: Mapping[str, Mapping[str, Any]], listings: Mapping[str, tuple[str, ...]], extra: str = ""
) -> list[str]:
    """Breadth-first import order starting at ``main``; files missing from ``docs`` are skipped."""
    order: list[str] = []
    pending = [main]
    while pending:
        path = pending.pop(0)
        if path in order or path not in docs:
            continue
        order.append(path)
        for pattern in import_patterns(path, docs[path]):
            pending.extend(expand(pattern, listings, extra))
    return order


# ------------------------------------------------------------------------------------------- templates


def split_template(path: str, text: str) -> tuple[str, dict[str, str]]:
    """Go-template lines → TOML comments; refuse any directive other than ``{{ template "base" . }}``."""
    lines = text.splitlines(keepends=True)
    kept: dict[str, str] = {}
    out: list[str] = []
    for number, line in enumerate(lines, 1):
        if "{{" not in line:
            out.append(line)
            continue
        if not BASE_DIRECTIVE.match(line):
            raise ConfigError(
                f"Go template directive the agent cannot parse: {line.strip()[:80]!r}; supported templates are "
                'pure TOML, or {{ template "base" . }} followed by TOML',
                source=path,
                line=number,
            )
        marker = PLACEHOLDER.format(len(kept))
        kept[marker] = line
        out.append(marker + ("\n" if line.endswith("\n") else ""))
    return "".join(out), kept


def join_template(text: str, kept: Mapping[str, str]) -> str:
    for marker, line in kept.items():
        text = text.replace(marker + "\n", line if line.endswith("\n") else line + "\n", 1)
        text = text.replace(marker, line.rstrip("\n"), 1)
    return text


# ---------------------------------------------------------------------------------------------- engine


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
            order = _with_dir(load_order(self.layout.main, docs, self.listings), extra, docs, self.listings)
            now = self._effective_cri(docs, order, version, deep) or {}
            default = (now.get("containerd") or {}).get("default_runtime_name")
            taken_back = any(
                e.setting == "default-runtime" and e.after not in spec.handler_names() for e in edit.effects
            )
            if default in spec.handler_names() and not taken_back:
                edit.warnings.append(_DEFAULT_IS_OURS.format(name=default))
        return edit

    def _version_of(self, doc: Mapping[str, Any], path: str) -> int:
        try:
            return config_version(doc) if doc else (3 if deep_merge(self.version) else 2)
        except ValueError as err:
            raise ConfigError(str(err), source=path, key="version") from None

    def _effective_cri(self, docs: Mapping[str, Mapping[str, Any]], order: list[str], version: int, deep: bool) -> Any:
        merged = merge_configs([docs[p] for p in order], deep=deep)
        return tomldoc.get_in(merged, cri_keys(version))

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
        if not deep and tomldoc.get_in(doc, runtimes_keys(version)) is None and not _runtimes_of(before):
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
                docs, _with_dir(load_order(main, docs, self.listings), extra, docs, self.listings), version, deep
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
            if not _runtimes_of(before):
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
        order_b = _with_dir(
            load_order(main, before_docs, self.listings), extra_dirs, before_docs, self.listings, target
        )
        order_a = _with_dir(
            load_order(main, after_docs, self.listings, target), extra_dirs, after_docs, self.listings, target
        )
        cri_b = tomldoc.get_in(merge_configs([before_docs[p] for p in order_b], deep=deep), cri_keys(version)) or {}
        cri_a = tomldoc.get_in(merge_configs([after_docs[p] for p in order_a], deep=deep), cri_keys(version)) or {}
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


def _runtimes_of(cri: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not cri:
        return {}
    return ((cri.get("containerd") or {}).get("runtimes")) or {}


def _new_dropin(header: str, version: int) -> TOMLDocument:
    doc = tomlkit.parse(header)
    doc.add("version", version)
    doc.add(tomlkit.nl())
    return doc


def _with_dir(
    order: list[str],
    dirs: list[str],
    docs: Mapping[str, Any],
    listings: Mapping[str, tuple[str, ...]],
    extra: str = "",
) -> list[str]:
    for d in dirs:
        order = order + [p for p in expand(posixpath.join(d, "*.toml"), listings, extra) if p in docs]
    return list(dict.fromkeys(order))


def effective_problems(
    before: Mapping[str, Any], after: Mapping[str, Any], spec: RuntimeSpec, *, deep: bool, release: bool = False
) -> list[str]:
    """What the node would lose (or lack) if ``after`` became containerd's effective CRI table.

    ``release``: the agent takes back a default it set itself, so the default may change to another one.
    """
    problems: list[str] = []
    if not satisfied(after, spec):
        problems.append(f"runtime {spec.name!r} would not be in the effective config")
    rt_b, rt_a = _runtimes_of(before), _runtimes_of(after)
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
