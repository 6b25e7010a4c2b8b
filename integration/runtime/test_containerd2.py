"""What the real containerd 2 (v2.4.2, the cluster's build: ``containerd2.bin_dir``) makes of the configs
nodeagent writes for containerd 2.x (config version 3), and whether nodeagent's model of containerd 2's
load (``containerd_config``: imports breadth-first, plugin tables deep-merged) agrees with it.

- every golden case whose target is containerd 2 (tests/runtime/golden, ``containerd_version = "2.*"``): the
  node as the agent leaves it (input + expected), every host path moved into a temporary root;
- the containerd 2 layouts of tests/runtime/test_layouts.py (plain in place and conf.d drop-in, k0s's
  drop-in directory, RKE2's v3 Go template rendered the way RKE2 renders it: the generated config in
  place of ``{{ template "base" . }}``) and the messy starting points (empty, comment-only), each applied
  by the runtime subsystem on a sandbox root, with and without ``set_as_default`` + ``enable_cdi``;

each read by ``containerd --config FILE config dump``: every handler with runtime_type
``io.containerd.runc.v2``, its BinaryName and the CDI annotations, the default runtime as intended, and the
model's default runtime and handler tables equal to the dump's, key by key.

Then the real containerd 2 is started once on a written config (its own root, state, socket; NRI off) and
asked over CRI: RuntimeReady, our handlers among its runtime handlers with their runtime type and binary,
and no deprecation warning of containerd's caused by the config. Last, the agent on a running containerd 2
(the cluster's whole config, ``integration/cluster/containerd.py``, in its own root): detected as 2.4.2 by its
socket, a comment-only side file written as version 3 and validated by the daemon's own binary, its main
config edited in place, restarted, healthy, CRI serving our handlers, and reverted to the original bytes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel

from integration.cluster.containerd import ClusterContainerd
from integration.cluster.containerd import containerd_config as cluster_containerd_config
from nodeagent.backends.runtimectl import HostRuntimeControl
from nodeagent.runtime.detect import RKE2_DIR
from nodeagent.runtime.engine import RuntimeSpec
from tests.runtime.conftest import make_node
from tests.runtime.test_containerd_cdi import v3_file
from tests.runtime.test_layouts import CASES as LAYOUTS

from . import containerd2
from .conftest import (
    PAUSE_IMAGE,
    agent,
    left_by_agent,
    need_root_and,
    remove_tree,
    short_tmpdir,
    unmount_under,
    write_shim,
)

pytestmark = [pytest.mark.integration]

GOLDEN = Path(__file__).parents[2] / "tests/runtime/golden"
CONFIG = "etc/containerd/config.toml"
RUNC_V2 = "io.containerd.runc.v2"
ANNOTATIONS = ["cdi.k8s.io/*"]


def _settings(case: Path) -> dict[str, Any]:
    out: dict[str, Any] = tomllib.loads((case / "case.toml").read_text())
    return out


GOLDEN_2 = sorted(
    p.name
    for p in GOLDEN.iterdir()
    if (p / "case.toml").is_file()
    and str(_settings(p).get("settings", {}).get("containerd_version", "")).startswith("2.")
)
LAYOUTS_2 = [c for c in LAYOUTS if str(c.settings.get("containerd_version", "")).startswith("2.")]
MESSY_2 = {"messy-empty": b"", "messy-comment-only": b"# containerd config: defaults\n\n"}
FIGURES: dict[str, tuple[int, int]] = {}


@pytest.fixture(scope="module")
def binaries() -> Path:
    return containerd2.bin_dir()


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Any:
    yield
    if FIGURES:
        print("\ncontainerd 2.4.2 config dump vs nodeagent's model: handler keys compared / disagreeing")
        for name, (keys, differ) in sorted(FIGURES.items()):
            print(f"  {name:52} keys {keys:3}  disagree {differ}")


def check(name: str, spec: RuntimeSpec, real: dict[str, Any], model: dict[str, Any], default: str) -> None:
    """Our handlers as intended in containerd's dump, and the model agreeing with it."""
    plugin = containerd2.runtime_plugin(real)
    runtimes = plugin["containerd"]["runtimes"]
    for handler, path in spec.handlers():
        entry = runtimes.get(handler)
        assert entry is not None, f"{name}: containerd 2 has no runtime {handler!r}: {sorted(runtimes)}"
        assert entry["runtime_type"] == RUNC_V2, (handler, entry)
        assert entry["options"]["BinaryName"] == path, (handler, entry["options"])
        assert entry["container_annotations"] == ANNOTATIONS, (handler, entry)
    assert "runc" in runtimes, "containerd must keep its runc runtime"
    assert plugin["containerd"]["default_runtime_name"] == default
    # CDI: containerd 2.4 has no enable_cdi (always on, from cdi_spec_dirs); the key is dropped from the dump
    assert "enable_cdi" not in plugin and plugin["cdi_spec_dirs"], plugin.get("cdi_spec_dirs")
    handlers = [*spec.handler_names(), "runc"]  # runc: the keys the files set (see disagreements)
    diff = containerd2.disagreements(model, real, handlers)
    compared = sum(len(containerd2._flat(runtimes.get(h, {}))) for h in handlers)
    FIGURES[name] = (compared, len(diff))
    assert not diff, f"{name}: nodeagent's model of containerd 2 disagrees with containerd 2.4.2 (model, real):\n" + (
        "\n".join(f"  {k}: {v}" for k, v in diff.items())
    )
    cdi = containerd2.runtime_plugin(model).get("enable_cdi")
    assert cdi is not False, f"{name}: the model reads CDI as off; containerd 2.4 always enables it"


# ----------------------------------------------------------------------------------- golden cases


@pytest.mark.parametrize("name", GOLDEN_2)
def test_golden_containerd2_output_is_what_containerd2_reads(binaries: Path, name: str, tmp_path: Path) -> None:
    case = GOLDEN / name
    root = tmp_path / "root"
    left_by_agent(case, root)
    containerd2.rehome(root)
    settings = _settings(case)
    s = settings.get("settings", {})
    spec = RuntimeSpec(path=s.get("runtime_path", RuntimeSpec.path), set_as_default=bool(s.get("set_as_default")))
    kept_default = any("default_runtime_name = 'nvidia'" in w for w in settings.get("expect", {}).get("warnings", []))
    main = root / CONFIG
    check(name, spec, containerd2.dump(main, binaries), containerd2.modelled(root, main), _default(spec, kept_default))


def _default(spec: RuntimeSpec, kept: bool = False) -> str:
    return "nvidia" if spec.set_as_default or kept else "runc"


# ------------------------------------------------------------------------- layouts and messy nodes


def _rendered(root: Path) -> Path:
    """RKE2's config.toml as RKE2 renders config-v3.toml.tmpl: the generated file in place of the base line."""
    tmpl = root / RKE2_DIR.lstrip("/") / "config-v3.toml.tmpl"
    generated = (root / RKE2_DIR.lstrip("/") / "config.toml").read_text()
    lines = [generated if '{{ template "base" . }}' in line else line for line in tmpl.read_text().splitlines(True)]
    out = root / "rendered.toml"
    out.write_text("".join(lines))
    return out


AGENT_CASES = [
    *[(c.id, c.files, c.settings, c.distribution) for c in LAYOUTS_2],
    *[(n, {"/etc/containerd/config.toml": b}, {"containerd_version": "2.0.4"}, "plain") for n, b in MESSY_2.items()],
]


@pytest.mark.parametrize("default_and_cdi", [False, True], ids=["plain", "default+cdi"])
@pytest.mark.parametrize("case", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
async def test_agent_written_containerd2_config_is_what_containerd2_reads(
    binaries: Path, case: tuple[str, dict[str, bytes], dict[str, Any], str], default_and_cdi: bool, tmp_path: Path
) -> None:
    name, files, settings, distribution = case
    extra = {"set_as_default": True, "enable_cdi": True} if default_and_cdi else {}
    node = make_node(tmp_path, files, **settings, **extra)
    observed = await node.sub.observe()
    plan = node.sub.plan(observed)
    assert not plan.error, plan.error
    await node.sub.apply(plan)
    engine = node.sub.engine_for(observed)
    root = node.root.path
    containerd2.rehome(root)
    spec = RuntimeSpec(set_as_default=default_and_cdi)
    if distribution == "rke2":  # the default runtime is rke2's flag (--default-runtime), not the file
        spec = RuntimeSpec()
        main = _rendered(root)
        model = containerd2.modelled(root, main)
    else:
        main = node.root.resolve(engine.layout.main)
        dirs = (node.root.resolve(engine.layout.dropin_dir),) if engine.layout.dropin_dir else ()
        model = containerd2.modelled(root, main, dirs)
    real = containerd2.dump(main, binaries)
    check(f"{name} ({'default+cdi' if default_and_cdi else 'plain'})", spec, real, model, _default(spec))


UNVERSIONED = """[plugins."io.containerd.{plugin}".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.{plugin}".containerd.runtimes.nvidia.options]
  BinaryName = "/usr/bin/nvidia-container-runtime"
"""


@pytest.mark.parametrize("plugin", ["grpc.v1.cri", "cri.v1.runtime"])
def test_an_unversioned_file_is_read_by_containerd2_as_the_model_says(
    binaries: Path, plugin: str, tmp_path: Path
) -> None:
    """containerd 1.6 ignores these tables without a ``version`` line (test_messy_nodes.py); containerd 2 migrates
    the file from version 0 and reads them."""
    main = tmp_path / "config.toml"
    main.write_text(UNVERSIONED.format(plugin=plugin))
    real, model = containerd2.dump(main, binaries), containerd2.modelled(tmp_path, main)
    assert containerd2.runtime_plugin(real)["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"]
    assert containerd2.disagreements(model, real, ["nvidia"]) == {}


# ----------------------------------------------------------------------------------- CRI, started


async def cri_status(sock: Path) -> Any:
    import cri_grpc
    import cri_pb2

    channel = Channel(path=str(sock))
    try:
        stub = cri_grpc.RuntimeServiceStub(channel)
        return await asyncio.wait_for(stub.Status(cri_pb2.StatusRequest(verbose=True)), 30)
    finally:
        channel.close()


async def started_on(base: Path, binaries: Path, written: str) -> ClusterContainerd:
    """containerd 2 serving in ``base`` on a config the agent wrote (host paths under ``base``, NRI off)."""
    d = ClusterContainerd(
        base, str(binaries / "containerd"), "/etc/containerd/config.toml", "/run/containerd/containerd.sock", binaries
    )
    d.config.parent.mkdir(parents=True)
    # what containerd 2 would otherwise create or serve on the host: its opt directory and NRI's socket
    d.config.write_text(
        containerd2.rehome_text(written, base)
        + f"\n[plugins.'io.containerd.internal.v1.opt']\n  path = '{base}/opt/containerd'\n"
        + "\n[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n"
        + f"\n[plugins.'io.containerd.image-verifier.v1.bindir']\n  bin_dir = '{base}/opt/iv'\n"
    )
    d.write_restart_script()
    d.start()
    await asyncio.to_thread(d.wait_cri_ok, 60)
    return d


def deprecations(d: ClusterContainerd) -> set[str]:
    """``ctr deprecations list``'s ids (cgroup v1 is this host's own, not the config's)."""
    listed = d.ctr("deprecations", "list").stdout.splitlines()[1:]
    return {line.split()[0] for line in listed if line.strip()} - {"io.containerd.deprecation/cgroup-v1"}


async def test_containerd2_started_on_a_written_config_serves_our_handlers_over_cri(binaries: Path) -> None:
    need_root_and("runc")
    base = short_tmpdir()
    d: ClusterContainerd | None = None
    try:
        d = await started_on(base, binaries, (GOLDEN / "containerd-v3-2.0-default/expected" / CONFIG).read_text())
        reply = await cri_status(d.sock)
        conditions = {c.type: c.status for c in reply.status.conditions}
        handlers = sorted(h.name for h in reply.runtime_handlers)
        config = json.loads(reply.info["config"])
        runtimes = config["containerd"]["runtimes"]
        print(f"\ncontainerd 2.4.2 over CRI: conditions {conditions}, runtime handlers {handlers}")
        assert conditions.get("RuntimeReady") is True, (conditions, d.log_text()[-3000:])
        assert {"nvidia", "nvidia-cdi", "nvidia-legacy", "runc"} <= set(handlers), handlers
        for handler, path in RuntimeSpec().handlers():
            assert runtimes[handler]["runtimeType"] == RUNC_V2, runtimes[handler]
            assert runtimes[handler]["options"]["BinaryName"] == path, runtimes[handler]
        assert config["containerd"]["defaultRuntimeName"] == "runc"
        # a deprecation our config causes would show here (ContainerdHasNoDeprecationWarnings is false on
        # this host for its cgroup v1 alone)
        assert not deprecations(d)
    finally:
        if d is not None:
            d.stop()
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("added", [False, True], ids=["as-written", "enable_cdi-added"])
async def test_enable_cdi_is_not_written_for_containerd_2_4_and_cdi_stays_on(
    binaries: Path, added: bool, tmp_path: Path
) -> None:
    """runtime.enable_cdi on containerd 2.4.2: the agent writes no ``enable_cdi`` (removed in 2.4: containerd
    warns "Ignoring unknown key" for it), and containerd serves CDI from its ``cdi_spec_dirs``. The control
    (``enable_cdi-added``: the key as the agent wrote it before) shows containerd's warning is seen."""
    need_root_and("runc")
    node = make_node(tmp_path, {"/" + CONFIG: v3_file()}, containerd_version="2.4.2", enable_cdi=True)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    await node.sub.apply(plan)
    data = node.read("/" + CONFIG)
    assert data is not None
    written = data.decode()
    assert "enable_cdi" not in written
    if added:
        head = "[plugins.'io.containerd.cri.v1.runtime']\n"
        assert head in written
        written = written.replace(head, head + "  enable_cdi = true\n", 1)
    base = short_tmpdir()
    d: ClusterContainerd | None = None
    try:
        d = await started_on(base, binaries, written)
        config = json.loads((await cri_status(d.sock)).info["config"])
        warned = [line for line in d.log_text().splitlines() if "enable_cdi" in line]
        print(
            f"\ncontainerd 2.4.2 ({'enable_cdi added' if added else 'as written'}): cdiSpecDirs "
            f"{config.get('cdiSpecDirs')}, log lines naming enable_cdi {len(warned)}, deprecations {deprecations(d)}"
        )
        assert config.get("cdiSpecDirs") == [f"{base}/etc/cdi", f"{base}/var/run/cdi"], config.get("cdiSpecDirs")
        assert "nvidia-cdi" in config["containerd"]["runtimes"]
        assert not deprecations(d)
        if added:
            assert warned and "Ignoring unknown key" in warned[0], warned
        else:
            assert not warned, warned
    finally:
        if d is not None:
            d.stop()
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------- the agent on a running containerd 2


def running_containerd2(base: Path, binaries: Path) -> ClusterContainerd:
    """containerd 2 serving in ``base`` on the cluster's whole config (every path under ``base``, NRI off)."""
    d = ClusterContainerd(
        base, str(binaries / "containerd"), "/etc/containerd/config.toml", "/run/containerd/containerd.sock", binaries
    )
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(
        cluster_containerd_config(
            base,
            d.socket_host,
            bin_dir=binaries,
            sandbox_image=PAUSE_IMAGE,
            cdi_spec_dirs=[base / "etc/cdi"],
            cdi_handler="cluster-cdi",
            cdi_runtime=base / "bin/cdi-runc",
            runc=shutil.which("runc") or "runc",
        )
    )
    d.write_restart_script()
    d.start()
    d.wait_cri_ok(60)
    return d


async def test_agent_applies_validates_and_reverts_on_a_running_containerd2(binaries: Path) -> None:
    """Detected by its socket (2.4.2: deep merge, config version 3 path), edited in place, checked by the
    daemon's own `config dump`, restarted, healthy, its CRI serving our handlers; revert puts the bytes back."""
    need_root_and("runc", "ctr")
    base = short_tmpdir()
    d = running_containerd2(base, binaries)
    try:
        shim, _ = write_shim(base)
        original = d.config.read_bytes()
        (base / "etc/containerd/empty.toml").write_bytes(b"# containerd config: defaults\n\n")
        # a messy side file first: the agent writes `version = 3` and validates it with the daemon's binary
        side = agent(d, runtime_path=str(shim), config_path="/etc/containerd/empty.toml", restart="none")
        observed = await side.observe()
        assert observed.version is not None and observed.version.version == "2.4.2", observed.version
        plan = side.plan(observed)
        assert not plan.error, plan.error
        await side.apply(plan)
        assert b"\nversion = 3\n" in (base / "etc/containerd/empty.toml").read_bytes()
        assert await HostRuntimeControl(d.root).validate(plan.steps[0].payload.target) == ""
        # the daemon's own config: in place, restarted, healthy
        sub = agent(d, runtime_path=str(shim))
        plan = sub.plan(await sub.observe())
        assert not plan.error, plan.error
        assert [s.action for s in plan.steps] == ["write-file", "restart-runtime"]
        pid = d.pid()
        await sub.apply(plan)
        assert d.pid() != pid
        d.wait_cri_ok(60)
        reply = await cri_status(d.sock)
        handlers = {h.name for h in reply.runtime_handlers}
        assert {"nvidia", "nvidia-cdi", "nvidia-legacy", "runc", "cluster-cdi"} <= handlers, handlers
        runtimes = json.loads(reply.info["config"])["containerd"]["runtimes"]
        assert runtimes["nvidia"]["options"]["BinaryName"] == str(shim), runtimes["nvidia"]
        assert runtimes["nvidia"]["runtimeType"] == RUNC_V2
        assert sub.plan(await sub.observe()).empty
        await sub.revert()
        assert d.config.read_bytes() == original
        d.wait_cri_ok(60)
        assert "nvidia" not in {h.name for h in (await cri_status(d.sock)).runtime_handlers}
    finally:
        d.stop()
        d.cleanup_shims()
        remove_tree(base)
