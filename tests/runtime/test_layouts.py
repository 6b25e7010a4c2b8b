"""Every engine x config version x fixture: apply, apply again, revert, and what must survive.

Each case is a realistic node (the real containerd 1.6.20 default config, containerd 2.0's defaults,
k0s, k3s, RKE2, microk8s, CRI-O and docker files written from their documented defaults). The subsystem
runs against a sandbox root with a simulated runtime control; the properties checked are the issue's:
apply gives the expected document, a second apply writes nothing, revert gives the original bytes, and
comments and unknown keys survive.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodeagent.runtime import containerd_config as ctdconf
from nodeagent.runtime import tomldoc
from nodeagent.runtime.detect import K3S_DIR, MICROK8S_ARGS, RKE2_DIR

from .conftest import fixture

RUNTIME = "/usr/bin/nvidia-container-runtime"
V16 = "containerd-1.6.20-default.toml"


def _with_imports(name: str, imports: str) -> bytes:
    """A fixture whose top-level ``imports = []`` line is replaced (or added after ``version``)."""
    text = fixture(name).decode()
    if "imports = []" in text:
        return text.replace("imports = []", f"imports = {imports}", 1).encode()
    return text.replace("version = ", f"imports = {imports}\nversion = ", 1).encode()


@dataclass
class Case:
    id: str
    files: dict[str, bytes]
    target: str
    """The file the agent writes."""
    engine: str = "containerd"
    version: int = 2
    settings: dict[str, Any] = field(default_factory=dict)
    distribution: str = ""
    in_place: bool = True
    """The target existed before (its original lines must survive in order)."""
    copied_from: tuple[str, ...] = ()
    """Runtimes whose options the new one copies."""
    restarts: int = 1
    runc_on_disk: bool = True
    """False where runc comes from containerd >= 2.0's built-in defaults (deep merge keeps it)."""
    """Restarts per apply: k0s restarts containerd itself when its drop-in directory changes."""


CASES = [
    Case(
        "plain-1.6-default-v2",
        {"/etc/containerd/config.toml": fixture(V16)},
        "/etc/containerd/config.toml",
        settings={"containerd_version": "1.6.20"},
        distribution="plain",
        copied_from=("runc",),
    ),
    Case(
        "plain-2.0-default-v3",
        {"/etc/containerd/config.toml": fixture("containerd-2.0-default.toml")},
        "/etc/containerd/config.toml",
        version=3,
        settings={"containerd_version": "2.0.4"},
        distribution="plain",
        copied_from=("runc",),
    ),
    Case(
        "plain-v1-legacy",
        {"/etc/containerd/config.toml": fixture("containerd-v1.toml")},
        "/etc/containerd/config.toml",
        version=1,
        settings={"containerd_version": "1.6.20"},
        distribution="plain",
        copied_from=("runc",),
    ),
    Case(
        "plain-eks-systemd-v2",
        {"/etc/containerd/config.toml": fixture("containerd-eks-systemd.toml")},
        "/etc/containerd/config.toml",
        settings={"containerd_version": "1.7.27"},
        distribution="plain",
        copied_from=("runc",),
    ),
    Case(
        "plain-conf.d-1.6-dropin",
        {"/etc/containerd/config.toml": _with_imports(V16, '["/etc/containerd/conf.d/*.toml"]')},
        "/etc/containerd/conf.d/99-nvidia.toml",
        settings={"containerd_version": "1.6.20"},
        distribution="plain",
        in_place=False,
        copied_from=("runc",),
    ),
    Case(
        "plain-conf.d-2.0-dropin",
        {
            "/etc/containerd/config.toml": _with_imports(
                "containerd-2.0-default.toml", "['/etc/containerd/conf.d/*.toml']"
            )
        },
        "/etc/containerd/conf.d/99-nvidia.toml",
        version=3,
        settings={"containerd_version": "2.1.0"},
        distribution="plain",
        in_place=False,
        copied_from=("runc",),
    ),
    Case(
        "k0s-1.6-dropin-over-registry-dropin",
        {
            "/etc/k0s/containerd.toml": fixture("k0s/containerd.toml"),
            "/etc/k0s/containerd.d/10-registry.toml": fixture("k0s/10-registry.toml"),
        },
        "/etc/k0s/containerd.d/99-nvidia.toml",
        settings={"containerd_version": "1.7.27"},
        distribution="k0s",
        in_place=False,
        restarts=0,
        copied_from=("runc",),
    ),
    Case(
        "k0s-2.x-minimal-dropin",
        {"/etc/k0s/containerd.toml": fixture("k0s/containerd.toml")},
        "/etc/k0s/containerd.d/99-nvidia.toml",
        settings={"containerd_version": "2.0.4"},
        distribution="k0s",
        in_place=False,
        restarts=0,
        runc_on_disk=False,
    ),
    Case(
        "k3s-no-template-creates-base-template",
        {f"{K3S_DIR}/config.toml": fixture("k3s/config.toml")},
        f"{K3S_DIR}/config.toml.tmpl",
        settings={"containerd_version": "1.7.23"},
        distribution="k3s",
        in_place=False,
    ),
    Case(
        "k3s-base-template-with-kata",
        {
            f"{K3S_DIR}/config.toml": fixture("k3s/config.toml"),
            f"{K3S_DIR}/config.toml.tmpl": fixture("k3s/config.toml.tmpl"),
        },
        f"{K3S_DIR}/config.toml.tmpl",
        settings={"containerd_version": "1.7.23"},
        distribution="k3s",
    ),
    Case(
        "rke2-v3-creates-v3-template",
        {f"{RKE2_DIR}/config.toml": fixture("rke2/config.toml")},
        f"{RKE2_DIR}/config-v3.toml.tmpl",
        version=3,
        settings={"containerd_version": "2.0.5"},
        distribution="rke2",
        in_place=False,
    ),
    Case(
        "microk8s-template-with-vars",
        {f"{MICROK8S_ARGS}/containerd-template.toml": fixture("microk8s/containerd-template.toml")},
        f"{MICROK8S_ARGS}/containerd-template.toml",
        settings={"containerd_version": "1.6.28"},
        distribution="microk8s",
        copied_from=("runc",),
    ),
    Case(
        "no-config-file-yet",
        {"/run/containerd/containerd.sock": b""},
        "/etc/containerd/config.toml",
        settings={"containerd_version": "1.6.20", "engine": "containerd"},
        distribution="plain",
        in_place=False,
    ),
    Case(
        "crio-crun-default",
        {
            "/etc/crio/crio.conf": fixture("crio/crio.conf"),
            "/etc/crio/crio.conf.d/10-crun.conf": fixture("crio/10-crun.conf"),
        },
        "/etc/crio/crio.conf.d/99-nvidia.conf",
        engine="crio",
        in_place=False,
    ),
    Case(
        "crio-runc-default",
        {"/etc/crio/crio.conf": fixture("crio/crio.conf")},
        "/etc/crio/crio.conf.d/99-nvidia.conf",
        engine="crio",
        in_place=False,
    ),
    *[
        Case(
            f"docker-{name}",
            {"/etc/docker/daemon.json": fixture(f"docker/daemon-{name}.json")},
            "/etc/docker/daemon.json",
            engine="docker",
        )
        for name in ("4space", "2space", "tabs")
    ],
]


def _effective_containerd(node: Any, case: Case) -> dict[str, Any]:
    """containerd's effective CRI table from the files now on disk (generated file for templates)."""
    observed = node.observed
    engine = node.sub.engine_for(observed)
    docs = engine._docs()  # the same parser containerd.py plans with
    main = engine.layout.main
    if engine.layout.template == "go":
        text, _ = ctdconf.split_template(main, observed.files[main].decode())
        gen = tomllib.loads(observed.files[engine.layout.generated].decode())
        return tomldoc.get_in(
            ctdconf.merge_configs([gen, tomllib.loads(text)], deep=True), ctdconf.cri_keys(case.version)
        )
    order = ctdconf.with_dirs(
        ctdconf.load_order(main, docs, observed.listings),
        [engine.layout.dropin_dir] if engine.layout.dropin_dir else [],
        docs,
        observed.listings,
    )
    deep = ctdconf.deep_merge(engine.version)
    merged = ctdconf.merge_configs([docs[p] for p in order], deep=deep)
    return tomldoc.get_in(merged, ctdconf.effective_cri_keys(case.version, deep))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_apply_apply_again_revert(node_factory: Any, case: Case) -> None:
    node = node_factory(case.files, **case.settings)
    before = node.snapshot()
    observed = await node.sub.observe()
    plan = node.sub.plan(observed)
    assert not plan.error, plan.error
    assert observed.detected.engine == case.engine
    if case.distribution:
        assert observed.detected.distribution == case.distribution
    writes = [s for s in plan.steps if s.action == "write-file"]
    assert [s.target for s in writes] == [case.target]
    assert plan.steps[-1].disruption in ("restart", "reload")
    assert plan.steps[-1].disrupts
    assert any("engine" in e for e in plan.evidence)
    await node.sub.apply(plan)
    after = node.snapshot()
    new = after[case.target]
    assert {p for p in after if after[p] != before.get(p)} == {case.target}
    # the expected document
    if case.engine == "docker":
        doc = json.loads(new)
        assert doc["runtimes"]["nvidia"] == {"path": RUNTIME}
        original = json.loads(before[case.target])
        assert {k: v for k, v in doc.items() if k != "runtimes"} == {
            k: v for k, v in original.items() if k != "runtimes"
        }
    elif case.engine == "crio":
        doc = tomllib.loads(new.decode())
        entry = doc["crio"]["runtime"]["runtimes"]["nvidia"]
        assert entry["runtime_path"] == RUNTIME and entry["runtime_type"] == "oci"
        assert entry["monitor_path"] == "/usr/libexec/crio/conmon"
        assert "default_runtime" not in doc["crio"]["runtime"]
    else:
        node.observed = await node.sub.observe()
        cri = _effective_containerd(node, case)
        runtimes = cri["containerd"]["runtimes"]
        assert runtimes["nvidia"]["options"]["BinaryName"] == RUNTIME
        assert runtimes["nvidia"]["runtime_type"]
        assert "runc" in runtimes or not case.runc_on_disk, "containerd must keep its runc runtime"
        for source in case.copied_from:
            want = runtimes[source].get("options", {}).get("SystemdCgroup")
            assert runtimes["nvidia"].get("options", {}).get("SystemdCgroup") == want
        assert cri["containerd"].get("default_runtime_name") != "nvidia"
    # comments and unknown keys survive: the original lines are still there, in order
    if case.in_place:
        # (JSON: the member that was last gains a comma)
        old_lines = [line.rstrip(",") for line in before[case.target].decode().splitlines()]
        new_lines = iter(line.rstrip(",") for line in new.decode().splitlines())
        missing = [line for line in old_lines if not any(line == n for n in new_lines)]
        assert not missing, f"lines lost or reordered: {missing[:3]}"
    # apply again: an empty plan, no writes
    again = node.sub.plan(await node.sub.observe())
    assert again.empty and not again.error, again.steps
    assert node.snapshot() == after
    assert len(node.control.restarts) == case.restarts
    # revert: the original bytes, created files removed
    result = await node.sub.revert()
    assert case.target in result.changed
    assert node.snapshot() == before
    assert len(node.control.restarts) == 2 * case.restarts


@pytest.mark.parametrize("case", [c for c in CASES if c.engine == "containerd"], ids=lambda c: c.id)
async def test_set_as_default_and_cdi(node_factory: Any, case: Case) -> None:
    node = node_factory(case.files, set_as_default=True, enable_cdi=True, **case.settings)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    await node.sub.apply(plan)
    node.observed = await node.sub.observe()
    cri = _effective_containerd(node, case)
    if case.distribution in ("k3s", "rke2"):
        assert any("--default-runtime" in w for w in plan.warnings)
        return
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    assert cri["enable_cdi"] is True
    assert node.sub.plan(node.observed).empty
    await node.sub.revert()
    assert node.read(case.target) == case.files.get(case.target)
