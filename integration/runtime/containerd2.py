"""The real containerd 2 for the runtime tests: the cluster's build (``integration/cluster/build_containerd.sh``,
v2.4.2 from its Go module, cached under ~/.cache/nodeagent/containerd/), reused, not built a second time.

- :func:`bin_dir`: the directory of the built ``containerd`` and ``ctr`` (skip, or fail under
  NODEAGENT_REQUIRE_INTEGRATION=1, when it cannot be built);
- :func:`rehome`: a node's files copied into a temporary root name that root in every host path containerd
  would read or create (imports, root, state, sockets, CNI and CDI directories); the handlers' ``BinaryName``
  stays as written;
- :func:`dump`: ``containerd --config FILE config dump`` of that containerd, parsed (containerd's own load:
  every import, each file migrated to its config version, then merged);
- :func:`modelled`: the same files through nodeagent's model of that load (``containerd_config``), which the
  agent plans with;
- :func:`disagreements`: where the model and the real dump differ on the CRI runtime settings.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from nodeagent.runtime import containerd_config as ctdconf
from tests.support import require

RUNTIME_PLUGIN = "io.containerd.cri.v1.runtime"
# host paths the test configs name that containerd reads (imports) or would create (root, state, sockets,
# CNI and CDI directories, rke2's opt path): each gets the temporary root in front
HOST_PREFIXES = (
    "/etc/containerd/",
    "/etc/k0s/",
    "/var/lib/rancher/",
    "/var/lib/containerd",
    "/run/containerd",
    "/run/k0s",
    "/run/k3s",
    "/etc/cdi",
    "/var/run/cdi",
    "/opt/cni",
    "/etc/cni",
)
# settings containerd 2.4 no longer has: its `config dump` drops them (with a warning "Ignoring unknown key")
DROPPED_BY_2_4 = {
    "enable_cdi": "CDI is always enabled (plugins/cri/runtime/plugin.go, migrateConfig)",
}


def bin_dir() -> Path:
    from integration.cluster.cluster import ClusterError, build_containerd  # lazy: cluster imports this package

    try:
        out = build_containerd()
    except ClusterError as err:
        require(False, f"containerd 2 could not be built: {err}")
        raise
    require((out / "containerd").is_file(), f"no containerd in {out}")
    return out


def rehome_text(text: str, root: Path) -> str:
    for prefix in HOST_PREFIXES:
        for quote in ('"', "'"):
            text = text.replace(f"{quote}{prefix}", f"{quote}{root}{prefix}")
    return text


def rehome(root: Path) -> None:
    """Every TOML file (and Go template) under ``root`` names ``root`` in its host paths."""
    for p in root.rglob("*"):
        if p.is_file() and (p.suffix in (".toml", ".tmpl")):
            p.write_text(rehome_text(p.read_text(), root))


def dump(config: Path, binaries: Path | None = None) -> dict[str, Any]:
    """containerd 2's effective config for ``config`` (its ``config dump``), parsed."""
    binary = (binaries or bin_dir()) / "containerd"
    done = subprocess.run(
        [str(binary), "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{binary} --config {config} config dump:\n{done.stderr[-3000:]}"
    out: dict[str, Any] = tomllib.loads(done.stdout)
    return out


def modelled(root: Path, main: Path, dirs: tuple[Path, ...] = ()) -> dict[str, Any]:
    """nodeagent's model of containerd 2 loading ``main``: imports breadth-first, plugin tables deep-merged
    (``dirs``: drop-in directories the agent's layout adds, as k0s does)."""
    docs: dict[str, dict[str, Any]] = {}
    listings: dict[str, tuple[str, ...]] = {}
    for p in sorted(root.rglob("*.toml")):
        docs[str(p)] = tomllib.loads(p.read_text())
        listings[str(p.parent)] = (*listings.get(str(p.parent), ()), p.name)
    order = ctdconf.with_dirs(ctdconf.load_order(str(main), docs, listings), [str(d) for d in dirs], docs, listings)
    return ctdconf.merge_configs([docs[p] for p in order], deep=True)


def runtime_plugin(doc: dict[str, Any]) -> dict[str, Any]:
    """The CRI runtime plugin's table (config version 3 and 4)."""
    out: dict[str, Any] = doc.get("plugins", {}).get(RUNTIME_PLUGIN, {})
    return out


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value; Go zero values left out (containerd decodes into structs: absent == zero)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {} if node in ("", 0, False, []) else {prefix: node}


def disagreements(
    model: dict[str, Any], real: dict[str, Any], handlers: list[str], builtin: tuple[str, ...] = ("runc",)
) -> dict[str, Any]:
    """Where the modelled CRI runtime settings differ from containerd's dump: the default runtime and every
    key of each named handler (key: (model, real)). Both ways for our handlers; for a ``builtin`` one (runc,
    which containerd 2's own defaults carry and the files are merged onto, e.g. ``sandboxer = "podsandbox"``,
    something the model leaves out) only the keys the model has. ``enable_cdi`` is not a key of 2.4 (see
    DROPPED_BY_2_4) and is left to the caller."""
    m, r = runtime_plugin(model), runtime_plugin(real)
    mc, rc = m.get("containerd", {}), r.get("containerd", {})
    out: dict[str, Any] = {}
    want_default, have_default = mc.get("default_runtime_name", "runc"), rc.get("default_runtime_name")
    if want_default != have_default:
        out["containerd.default_runtime_name"] = (want_default, have_default)
    for name in handlers:
        a = _flat(mc.get("runtimes", {}).get(name, {}), f"runtimes.{name}")
        b = _flat(rc.get("runtimes", {}).get(name, {}), f"runtimes.{name}")
        for key in sorted(a.keys() if name in builtin else a.keys() | b.keys()):
            if json.dumps(a.get(key)) != json.dumps(b.get(key)):
                out[key] = (a.get(key, "<absent>"), b.get(key, "<absent>"))
    return out
