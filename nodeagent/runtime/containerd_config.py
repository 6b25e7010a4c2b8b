"""containerd's config files as containerd itself reads them: versions, key paths, imports, merge rules.

- config versions 1 to 4 and where each keeps the CRI plugin (``cri_keys``, ``runtimes_keys``);
- the shape check that names file and key for a value of the wrong type;
- imports: patterns relative to the importing file, globs in lexical order, breadth-first load order;
- the merge (containerd's mergeConfig): plugin tables replaced before 2.0, deep-merged from 2.0, where each
  file of config version 1 or 2 is first migrated to version 3 (``migrate_to_v3``: its CRI runtime settings
  move under ``io.containerd.cri.v1.runtime``), so the effective CRI table is read there
  (``effective_cri_keys``);
- k3s/RKE2 Go templates: ``{{ template "base" . }}`` lines kept aside while the TOML is edited.

Pure functions over parsed documents; ``containerd.py`` plans the edit with them.
"""

from __future__ import annotations

import copy
import fnmatch
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from nodeagent.errors import ConfigError
from nodeagent.runtime import tomldoc
from nodeagent.runtime.engine import want_type

CRI_PLUGIN = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
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


def effective_cri_keys(version: int, deep: bool) -> tuple[str, ...]:
    """Where the merged config keeps the CRI table: containerd >= 2.0 (``deep``) migrates every file to version
    3 before merging, so its runtime plugin's key whatever the files' version."""
    return cri_keys(3 if deep else version)


def deep_merge(version: str) -> bool:
    """containerd >= 2.0 deep-merges plugin tables from imports; unknown versions get the safe rule."""
    try:
        return int(version.split(".", maxsplit=1)[0]) >= 2
    except ValueError:
        return False


CDI_BUILTIN_FROM = (2, 2)
"""From containerd 2.2 the agent leaves ``enable_cdi`` out: CDI is on by default from 2.0 (1.7's default is
off), the key is deprecated from 2.2 (containerd's RELEASES.md table; 2.3 warns when it is ``false``) and gone in
2.4 (``plugins/cri/runtime/plugin.go`` drops it when migrating). 2.0 and 2.1 still get ``true`` written, as 1.7
needs: harmless there, and it overrides a ``false`` another tool left."""
ENABLE_CDI_GONE_FROM = (2, 4)
"""containerd 2.2 and 2.3 still read ``enable_cdi`` (a ``false`` there turns CDI off); 2.4 ignores the key."""
_MAJOR_MINOR = re.compile(r"^v?(\d+)\.(\d+)")


def major_minor(version: str) -> tuple[int, int] | None:
    """``(2, 4)`` for ``2.4.2`` or ``v2.4.0-rc.1``; None when the version is unknown."""
    found = _MAJOR_MINOR.match(version.strip())
    return (int(found[1]), int(found[2])) if found else None


def cdi_builtin(version: str) -> bool | None:
    """Whether containerd of ``version`` always has CDI (>= 2.2); None when the version is unknown."""
    found = major_minor(version)
    return None if found is None else found >= CDI_BUILTIN_FROM


def cdi_turned_off(doc: Mapping[str, Any]) -> bool:
    """Whether a file sets ``enable_cdi = false`` in a CRI plugin table (of any config version)."""
    plugins = doc.get("plugins")
    if not isinstance(plugins, Mapping):
        return False
    tables = [plugins.get(name) for name in CRI_PLUGIN.values()]
    return any(isinstance(t, Mapping) and tomldoc.plain(t.get("enable_cdi")) is False for t in tables)


# ------------------------------------------------------------------------------------ effective config


# keys of a version 2 CRI table that containerd 2's migration does not carry into the runtime plugin
_MOVED_ELSEWHERE = frozenset(
    {
        "sandbox_image", "registry", "image_decryption", "max_concurrent_downloads", "image_pull_progress_timeout",
        "image_pull_with_sync_fs", "stats_collect_period", "disable_tcp_service", "stream_server_address",
        "stream_server_port", "stream_idle_timeout", "enable_tls_streaming", "x509_key_pair_streaming",
    }
)  # fmt: skip
_CTD_MOVED_ELSEWHERE = frozenset({"snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"})


def migrate_to_v3(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """One file as containerd >= 2.0 reads it before merging: a version 1 or 2 file's CRI settings copied into
    the version 3 runtime plugin (``plugins/cri/runtime/plugin.go``, ``configMigration``: a key the file
    already sets there wins; image and streaming settings go to other plugins; ``sandbox_mode`` becomes
    ``sandboxer``; ``cni.bin_dir`` becomes ``cni.bin_dirs``). ``enable_cdi`` is kept (containerd 2.0 has it;
    2.4 drops it, CDI always on). Version 3 and 4 files are returned as they are; so is a file without CRI
    settings."""
    try:
        version = config_version(doc)
    except ValueError:
        return doc
    plugins = doc.get("plugins")
    if version >= 3 or not isinstance(plugins, Mapping):
        return doc
    # version 1 (or no version line): short plugin names get their full one ("cri" is io.containerd.grpc.v1.cri),
    # full names stay, so tables keyed by the version 2 or 3 names are read too (config.go, v1Migrate)
    src = plugins.get("cri") if version == 1 and "cri" in plugins else plugins.get(CRI_PLUGIN[2])
    if not isinstance(src, Mapping):
        return doc
    out = copy.deepcopy(dict(doc))
    dst = out["plugins"].setdefault(CRI_PLUGIN[3], {})
    if not isinstance(dst, dict):
        return doc
    for key, value in src.items():
        if key in _MOVED_ELSEWHERE or key in ("cni", "containerd"):
            continue
        dst.setdefault(key, copy.deepcopy(value))
    if isinstance(src.get("cni"), Mapping):
        cni = dst.setdefault("cni", {})
        for key, value in src["cni"].items():
            if key == "bin_dir":
                if not cni.get("bin_dirs"):
                    cni["bin_dirs"] = [value]
            else:
                cni.setdefault(key, copy.deepcopy(value))
    if isinstance(src.get("containerd"), Mapping):
        ctd = dst.setdefault("containerd", {})
        for key, value in src["containerd"].items():
            if key not in _CTD_MOVED_ELSEWHERE:
                ctd.setdefault(key, copy.deepcopy(value))
        for entry in (ctd.get("runtimes") or {}).values():
            if isinstance(entry, dict) and "sandbox_mode" in entry and "sandboxer" not in entry:
                entry["sandboxer"] = entry.pop("sandbox_mode")
    return out


def merge_configs(docs: list[Mapping[str, Any]], *, deep: bool) -> dict[str, Any]:
    """containerd's mergeConfig over files in load order: plugin tables replaced (< 2.0), or (>= 2.0) each
    file migrated to version 3 and then deep-merged (read the result at ``effective_cri_keys``)."""
    out: dict[str, Any] = {}
    for doc in [migrate_to_v3(d) for d in docs] if deep else docs:
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


def with_dirs(
    order: list[str],
    dirs: list[str],
    docs: Mapping[str, Any],
    listings: Mapping[str, tuple[str, ...]],
    extra: str = "",
) -> list[str]:
    for d in dirs:
        order = order + [p for p in expand(posixpath.join(d, "*.toml"), listings, extra) if p in docs]
    return list(dict.fromkeys(order))


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
