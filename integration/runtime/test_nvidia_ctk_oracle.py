"""nvidia-ctk as a live oracle: the same node layouts configured by ``nvidia-ctk runtime configure`` and by
nodeagent, compared on the configuration the runtime ends up using.

The pinned nvidia-ctk (``nvidia_ctk.VERSION``) is built from its Go module on first use
(``nvidia_ctk.py``, cached under ~/.cache/nodeagent). It runs the way the toolkit's installer configures a
node: once per handler (``nvidia``, ``nvidia-cdi`` with ``<path>.cdi``, ``nvidia-legacy`` with
``<path>.legacy``), ``--set-as-default`` on the ``nvidia`` run only, ``--cdi.enabled`` when the case
enables CDI (containerd and docker; nvidia-ctk ignores it for CRI-O), every file in the case's temporary
root.

- containerd 1.6 cases (the machine's containerd): nvidia-ctk in its default drop-in mode
  (``--drop-in-config=<root>/etc/containerd/conf.d/99-nvidia.toml``) reading the current config from
  ``containerd config dump`` (``--config-source=command``, as the installer does; with the file source a
  second run would overwrite the first run's drop-in). Both results are compared as the real
  containerd's ``config dump`` shows them: containerd's own merge of every file.
- containerd 2.x cases: nvidia-ctk in drop-in mode (``--drop-in-config=<root>/etc/containerd/conf.d/99-<handler>.toml``,
  one per handler, each run adding its import to the main file); both results are compared as the real
  containerd 2 (v2.4.2, the cluster's build, ``containerd2.py``) shows them in its ``config dump``: each file
  migrated to its config version, imports deep-merged.
- CRI-O: there is no CRI-O binary here. nvidia-ctk edits crio.conf in place (its drop-in is rebuilt per
  run); both results are merged as CRI-O loads them (crio.conf, then crio.conf.d/* in lexical order, key by
  key: ``crio.effective``).
- docker: the parsed daemon.json.

On the containerd 1.6 results with a version 2 main file, the real containerd is also started on each
side (its own root, state and socket in the case's directory) and its CRI plugin must load; so is the
built containerd 2 on the containerd 2.x results. The version 1
case is not started: it is nvidia-ctk's own synthetic test input, whose ``runtime_engine`` makes the CRI
plugin refuse the config on either side.

Each result is flattened to dotted keys; a key whose value differs is a difference. Every difference
must match an entry of ``nvidia_ctk_accepted.json`` (engine, key pattern, reason; the same table is in
docs/parity.md), so a new one fails the test. The agree/disagree figures per case are printed (``-s``).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration.cluster.containerd import ClusterContainerd
from nodeagent.runtime import crio
from nodeagent.runtime.engine import RuntimeSpec
from tests.runtime.conftest import make_node
from tests.support import require, wait_until

from . import containerd2, nvidia_ctk
from .conftest import Containerd, need_root_and

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).parents[2]
GOLDEN = REPO / "tests/runtime/golden"
ACCEPTED = Path(__file__).parent / "nvidia_ctk_accepted.json"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
MESSY = {  # integration/runtime/test_messy_nodes.py's starting points
    "messy-empty": {CONTAINERD_CONFIG: b""},
    "messy-comment-only": {CONTAINERD_CONFIG: b"# containerd config: defaults\n\n"},
}
FIGURES: dict[str, tuple[str, int, int]] = {}


@dataclass(frozen=True)
class Case:
    name: str
    engine: str
    files: dict[str, bytes]
    settings: dict[str, Any]

    @property
    def containerd_version(self) -> str:
        return str(self.settings.get("containerd_version", "1.6.20"))

    @property
    def spec(self) -> RuntimeSpec:
        return RuntimeSpec(
            path=self.settings.get("runtime_path", RuntimeSpec.path),
            set_as_default=bool(self.settings.get("set_as_default", False)),
            enable_cdi=bool(self.settings.get("enable_cdi", False)),
        )


def _cases() -> list[Case]:
    out = []
    for case_dir in sorted(p for p in GOLDEN.iterdir() if (p / "case.toml").is_file()):
        settings = tomllib.loads((case_dir / "case.toml").read_text()).get("settings", {})
        base = case_dir / "input"
        files = {"/" + p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}
        out.append(Case(case_dir.name, case_dir.name.split("-", 1)[0], files, settings))
    out += [Case(name, "containerd", files, {"containerd_version": "1.6.20"}) for name, files in MESSY.items()]
    return out


CASES = _cases()


@pytest.fixture(scope="session")
def ctk() -> Path:
    require(shutil.which("go") is not None, "go is not installed (nvidia-ctk is built from its Go module)")
    try:
        return nvidia_ctk.ensure()
    except nvidia_ctk.Unavailable as err:
        require(False, str(err))
        raise


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print(f"\nnvidia-ctk {nvidia_ctk.VERSION} oracle: keys that agree / differ per case")
        for name, (engine, agree, differ) in sorted(FIGURES.items()):
            print(f"  {engine:10} {name:42} agree {agree:4}  differ {differ:3}")
        for engine in sorted({e for e, _, _ in FIGURES.values()}):
            rows = [v for v in FIGURES.values() if v[0] == engine]
            print(f"  {engine:10} total: {sum(r[1] for r in rows)} agree, {sum(r[2] for r in rows)} differ")


# ----------------------------------------------------------------------------------- the two sides


def _write(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)


def _rehome(root: Path) -> None:
    """Absolute /etc paths in imports point into the case's root, so the real containerd reads these files."""
    for p in (root / "etc/containerd").rglob("*.toml"):
        p.write_text(p.read_text().replace('"/etc/containerd/', f'"{root}/etc/containerd/'))


async def _nodeagent(case: Case, base: Path) -> tuple[Path, str]:
    """Plan and apply through the runtime subsystem on a root under ``base``: (the root, the plan's error)."""
    node = make_node(base, case.files, **case.settings)
    plan = node.sub.plan(await node.sub.observe())
    if not plan.error:
        await node.sub.apply(plan)
    return node.root.path, plan.error


def _ctk(binary: Path, case: Case, root: Path) -> None:
    spec = case.spec
    for name, path in spec.handlers():
        argv = [str(binary), "runtime", "configure", f"--runtime={case.engine}", *_where(case, root, name)]
        argv += [f"--nvidia-runtime-name={name}", f"--nvidia-runtime-path={path}"]
        if spec.set_as_default and name == spec.name:
            argv.append("--set-as-default")
        if spec.enable_cdi:
            argv.append("--cdi.enabled")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr}"


def _where(case: Case, root: Path, handler: str) -> list[str]:
    """The config and drop-in arguments of one run (see the module docstring for why)."""
    dropin = "99-nvidia.toml" if handler == "nvidia" else f"99-{handler}.toml"
    if case.engine == "docker":
        return [f"--config={root}/etc/docker/daemon.json"]
    if case.engine == "crio":
        return [f"--config={root}/etc/crio/crio.conf", f"--drop-in-config={root}/etc/crio/crio.conf.d/{dropin}"]
    config = root / CONTAINERD_CONFIG.lstrip("/")
    main = tomllib.loads(config.read_text()) if config.is_file() else {}
    if main and main.get("version", 1) == 1:  # version 1: nvidia-ctk edits it in place (no imports in v1)
        return [f"--config={config}", "--drop-in-config="]
    if not case.containerd_version.startswith("1."):
        return [f"--config={config}", f"--drop-in-config={root}/etc/containerd/conf.d/{dropin}"]
    wrapper = root / "containerd-dump.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("containerd")} --config {config} "$@"\n')
    wrapper.chmod(0o755)
    return [
        f"--config={config}",
        f"--drop-in-config={root}/etc/containerd/conf.d/99-nvidia.toml",
        "--config-source=command",
        f"--executable-path={wrapper}",
    ]


# ------------------------------------------------------------------------------- effective config


def _containerd_dump(root: Path) -> dict[str, Any]:
    binary = shutil.which("containerd")
    assert binary is not None
    done = subprocess.run(
        [binary, "--config", str(root / CONTAINERD_CONFIG.lstrip("/")), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def _crio_effective(root: Path) -> dict[str, Any]:
    main = root / "etc/crio/crio.conf"
    dropins = sorted((root / "etc/crio/crio.conf.d").glob("*")) if (root / "etc/crio/crio.conf.d").is_dir() else []
    return crio.effective(tomllib.loads(p.read_text()) for p in [main, *dropins] if p.is_file())


def effective(case: Case, root: Path) -> dict[str, Any]:
    if case.engine == "docker":
        obj: dict[str, Any] = json.loads((root / "etc/docker/daemon.json").read_text())
        return obj
    if case.engine == "crio":
        return _crio_effective(root)
    if case.containerd_version.startswith("1."):
        return _containerd_dump(root)
    return containerd2.dump(root / CONTAINERD_CONFIG.lstrip("/"))


ZERO: tuple[Any, ...] = ("", 0, False, [], {})


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value; zero values are left out (all three daemons decode into Go structs, where an
    absent key and its zero value are the same setting)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {} if any(node == z and type(node) is type(z) for z in ZERO) else {prefix: node}


def differences(ours: dict[str, Any], theirs: dict[str, Any], root_ours: Path, root_theirs: Path) -> dict[str, Any]:
    """Dotted key → (ours, theirs) where they differ; the case roots are written as <root>."""

    def norm(flat: dict[str, Any], root: Path) -> dict[str, Any]:
        return {k: json.loads(json.dumps(v).replace(str(root), "<root>")) for k, v in flat.items()}

    layout = ("imports", "version")  # which files were loaded, and the file format: not a runtime setting
    a, b = (
        norm({k: v for k, v in flatten(d).items() if k not in layout}, r)
        for d, r in ((ours, root_ours), (theirs, root_theirs))
    )
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
    }


def accepted() -> list[dict[str, str]]:
    entries: list[dict[str, str]] = json.loads(ACCEPTED.read_text())["differences"]
    return entries


def matching(engine: str, case: str, key: str) -> dict[str, str] | None:
    for entry in accepted():
        if entry["engine"] != engine or not fnmatch.fnmatchcase(case, entry.get("cases", "*")):
            continue
        if fnmatch.fnmatchcase(key, entry["key"]):
            return entry
    return None


def _main_version(root: Path) -> int:
    """The result's main file version (the wrapper below imports it from a version 2 file)."""
    version = tomllib.loads((root / CONTAINERD_CONFIG.lstrip("/")).read_text()).get("version", 1)
    return int(version)


def cri_status(root: Path, containerd_2: Path | None = None) -> str:
    """Start the real containerd on the result (its own root, state and socket) and read its CRI plugin's status;
    ``containerd_2``: the directory of the built containerd 2 and its ctr, else the machine's containerd.

    A small wrapper config imports the result and disables the ``opt`` plugin, the one default that
    would create a host directory (/opt/containerd), and on containerd 2 NRI (its socket is a host path).
    """
    nri = '[plugins."io.containerd.nri.v1.nri"]\n  disable = true\n' if containerd_2 else ""
    (root / "start.toml").write_text(
        f'version = 2\nimports = ["{root}{CONTAINERD_CONFIG}"]\ndisabled_plugins = ["io.containerd.internal.v1.opt"]\n'
        + nri
    )
    d = (
        ClusterContainerd(root, str(containerd_2 / "containerd"), "/start.toml", "/c.sock", containerd_2)
        if containerd_2
        else Containerd(root, shutil.which("containerd") or "containerd", "/start.toml", "/c.sock")
    )
    d.write_restart_script(f"--config {d.config} --root {root}/var/lib/ctd --state {root}/run/ctd --address {d.sock}")
    try:
        d.start()
        wait_until(lambda: d.cri_status() in ("ok", "error"), timeout_s=30, what=f"containerd on {root}")
        return d.cri_status() or ""
    finally:
        d.stop()
        d.cleanup_shims()


# ------------------------------------------------------------------------------------------- tests


def test_every_accepted_difference_is_documented() -> None:
    parity = (REPO / "docs/parity.md").read_text()
    for entry in accepted():
        assert entry["id"] in parity, f"{entry['id']} is accepted but docs/parity.md does not list it"
        assert entry["peer_file"] and entry["reason"], entry


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_nodeagent_and_nvidia_ctk_configure_the_same_runtime(ctk: Path, case: Case, tmp_path: Path) -> None:
    if case.engine == "containerd" and case.containerd_version.startswith("1."):
        require(shutil.which("containerd") is not None, "containerd is not installed")
    theirs_root = tmp_path / "theirs"
    _write(theirs_root, case.files)
    ours_root, error = await _nodeagent(case, tmp_path / "ours")
    _rehome(theirs_root)
    _ctk(ctk, case, theirs_root)
    if error:  # nodeagent refuses the node: only an accepted refusal may differ from nvidia-ctk's result
        entry = matching(case.engine, case.name, "<refused>")
        assert entry is not None, f"nodeagent refused {case.name} (nvidia-ctk did not): {error}"
        FIGURES[case.name] = (case.engine, 0, 1)
        return
    _rehome(ours_root)
    ours, theirs = effective(case, ours_root), effective(case, theirs_root)
    diff = differences(ours, theirs, ours_root, theirs_root)
    new = {k: v for k, v in diff.items() if matching(case.engine, case.name, k) is None}
    total = len(flatten(ours).keys() | flatten(theirs).keys())
    FIGURES[case.name] = (case.engine, total - len(diff), len(diff))
    assert not new, "differences from nvidia-ctk not in nvidia_ctk_accepted.json (key: (ours, nvidia-ctk)):\n" + (
        "\n".join(f"  {k}: {v}" for k, v in new.items())
    )
    if case.engine == "containerd" and case.containerd_version.startswith("1.") and _main_version(ours_root) == 2:
        need_root_and("containerd", "ctr")
        assert (cri_status(ours_root), cri_status(theirs_root)) == ("ok", "ok")
    if case.engine == "containerd" and not case.containerd_version.startswith("1."):
        need_root_and("runc")
        built = containerd2.bin_dir()
        assert (cri_status(ours_root, built), cri_status(theirs_root, built)) == ("ok", "ok")
