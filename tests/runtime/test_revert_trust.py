"""Revert you can trust: the backup journal is untrusted data, and nobody else's edit is overwritten."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodeagent.errors import PermanentError

from .conftest import fixture

CONFIG = "/etc/containerd/config.toml"
V16 = fixture("containerd-1.6.20-default.toml")
INDEX = "/var/lib/nodeagent/backups/index.json"


async def applied(node_factory: Any) -> Any:
    node = node_factory({CONFIG: V16})
    await node.sub.apply(node.sub.plan(await node.sub.observe()))
    assert b"nvidia" in node.read(CONFIG)
    return node


def edit_index(node: Any, change: Any) -> None:
    path = node.root.resolve(INDEX)
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# ------------------------------------------------------------------------------------ 9: untrusted journal


async def test_tampered_blob_name_cannot_reach_outside_the_state_dir(node_factory: Any, tmp_path: Path) -> None:
    node = await applied(node_factory)
    victim = node.root.resolve("/etc/precious")
    victim.write_bytes(b"keep me")

    def tamper(doc: dict[str, Any]) -> None:
        doc[CONFIG]["sha256"] = "../../../../etc/precious"

    edit_index(node, tamper)
    with pytest.raises(PermanentError, match=r"index\.json: entry '/etc/containerd/config.toml'.*sha256"):
        await node.sub.revert()
    assert victim.read_bytes() == b"keep me"
    assert b"nvidia" in node.read(CONFIG)  # nothing restored from a journal that is not trusted


@pytest.mark.parametrize("key", ["/etc/../../outside", "etc/relative", "/etc/containerd//config.toml", "/"])
async def test_tampered_paths_are_refused(node_factory: Any, key: str) -> None:
    node = await applied(node_factory)

    def tamper(doc: dict[str, Any]) -> None:
        entry = doc.pop(CONFIG)
        entry["host_path"] = key
        doc[key] = entry

    edit_index(node, tamper)
    with pytest.raises(PermanentError, match="not a clean absolute path"):
        await node.sub.revert()
    assert b"nvidia" in node.read(CONFIG)


async def test_blob_whose_bytes_do_not_match_its_digest_is_not_restored(node_factory: Any) -> None:
    node = await applied(node_factory)
    digest = hashlib.sha256(V16).hexdigest()
    node.root.resolve(f"/var/lib/nodeagent/backups/{digest}").write_bytes(b"version = 2\n# evil\n")
    with pytest.raises(PermanentError, match="does not match its sha256"):
        await node.sub.revert()
    assert b"nvidia" in node.read(CONFIG)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"/etc/containerd/config.toml": {"host_path": "/etc/containerd/config.toml"}}'],
    ids=["not-json", "not-an-object", "missing-fields"],
)
async def test_malformed_journal_is_a_named_error(node_factory: Any, body: bytes) -> None:
    node = await applied(node_factory)
    node.root.resolve(INDEX).write_bytes(body)
    with pytest.raises(PermanentError, match=r"/var/lib/nodeagent/backups/index\.json"):
        await node.sub.revert()


def nodeagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args], capture_output=True, text=True, timeout=120, check=False
    )


def cli_root(tmp_path: Path, config: bytes) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(config)
    settings = tmp_path / "nodeagent.toml"
    settings.write_text('version = 1\n[runtime]\ncontainerd_version = "1.6.20"\nrestart = "none"\n')
    return root, settings


@pytest.mark.parametrize("journal", ["missing", "malformed"])
def test_revert_cli_with_a_missing_or_malformed_journal_exits_non_zero(tmp_path: Path, journal: str) -> None:
    root, settings = cli_root(tmp_path, V16)
    args = ("--only", "runtime", "--root", str(root), "--config", str(settings))
    if journal == "malformed":
        assert nodeagent("apply", *args).returncode == 0
        (root / INDEX.lstrip("/")).write_text('{"x": 1}')
    done = nodeagent("revert", *args)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said and "backups/index.json" in said
    assert "runtime: restored" not in said, "the runtime's revert must not claim success"


# ------------------------------------------------------------------------ 10: someone else changed it


async def test_revert_refuses_to_overwrite_a_file_changed_since_and_force_restores(node_factory: Any) -> None:
    node = await applied(node_factory)
    theirs = node.read(CONFIG).replace(b'sandbox_image = "registry.k8s.io/pause:3.6"', b'sandbox_image = "mine:1"')
    node.write(CONFIG, theirs)
    with pytest.raises(PermanentError) as refused:
        await node.sub.revert()
    message = str(refused.value)
    assert "changed by someone else" in message and "--force" in message
    assert '-    sandbox_image = "registry.k8s.io/pause:3.6"' in message and '+    sandbox_image = "mine:1"' in message
    assert node.read(CONFIG) == theirs  # untouched
    node.sub.force_revert = True
    await node.sub.revert()
    assert node.read(CONFIG) == V16


async def test_revert_of_a_created_file_someone_rewrote_is_refused(node_factory: Any) -> None:
    node = node_factory({"/etc/crio/crio.conf": fixture("crio/crio.conf")})
    await node.sub.apply(node.sub.plan(await node.sub.observe()))
    dropin = "/etc/crio/crio.conf.d/99-nvidia.conf"
    node.write(dropin, b"# an operator's own settings now\n")
    with pytest.raises(PermanentError, match="changed by someone else"):
        await node.sub.revert()
    assert node.read(dropin) == b"# an operator's own settings now\n"


def test_revert_cli_conflict_exits_1_and_force_restores(tmp_path: Path) -> None:
    root, settings = cli_root(tmp_path, V16)
    args = ("--only", "runtime", "--root", str(root), "--config", str(settings))
    assert nodeagent("apply", *args).returncode == 0
    config = root / "etc/containerd/config.toml"
    config.write_bytes(config.read_bytes() + b"\n# operator note\n")
    done = nodeagent("revert", *args)
    assert done.returncode == 1 and "--force" in done.stderr and "+# operator note" in done.stderr, done.stderr
    assert b"# operator note" in config.read_bytes()
    forced = nodeagent("revert", "--force", *args)
    assert forced.returncode == 0, forced.stderr
    assert config.read_bytes() == V16


async def test_plan_says_when_a_managed_file_was_changed_since_the_agent_wrote_it(node_factory: Any) -> None:
    node = await applied(node_factory)
    assert not (node.sub.plan(await node.sub.observe())).warnings
    node.write(CONFIG, node.read(CONFIG) + b"\n# operator note\n")
    plan = node.sub.plan(await node.sub.observe())
    assert any(CONFIG in w and "changed by someone else" in w and "--force" in w for w in plan.warnings)
