"""Messy and hostile starting points (issue: never break the runtime), planned against a sandbox root."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import pytest

from nodeagent.backends.runtimectl import dumped_handler_problem

RUNTIME = "/usr/bin/nvidia-container-runtime"
CONFIG = "/etc/containerd/config.toml"


async def plan_of(node: Any) -> Any:
    return node.sub.plan(await node.sub.observe())


def new_bytes(plan: Any, path: str) -> bytes:
    return next(s.payload.new for s in plan.steps if s.target == path)


# ----------------------------------------------------------------------------- 1: empty / comment-only


@pytest.mark.parametrize("start", [b"", b"\n\n", b"# managed by cloud-init\n# defaults apply\n"])
@pytest.mark.parametrize(("ctd_version", "want"), [("1.6.20", 2), ("2.0.4", 3)])
async def test_empty_or_comment_only_containerd_config_gets_a_version(
    node_factory: Any, start: bytes, ctd_version: str, want: int
) -> None:
    node = node_factory({CONFIG: start}, containerd_version=ctd_version)
    plan = await plan_of(node)
    assert not plan.error, plan.error
    new = new_bytes(plan, CONFIG)
    doc = tomllib.loads(new.decode())
    assert doc["version"] == want
    key = "io.containerd.grpc.v1.cri" if want == 2 else "io.containerd.cri.v1.runtime"
    assert doc["plugins"][key]["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == RUNTIME
    assert new.startswith(start.rstrip(b"\n"))


DUMP_V2 = b"""version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
    BinaryName = "/usr/bin/nvidia-container-runtime"
"""


def test_dump_check_wants_the_handler_with_its_binary() -> None:
    assert dumped_handler_problem(DUMP_V2, "nvidia", RUNTIME) == ""
    assert "lacks runtime 'nvidia'" in dumped_handler_problem(b"version = 2\n", "nvidia", RUNTIME)
    wrong = dumped_handler_problem(DUMP_V2, "nvidia", "/opt/other")
    assert "BinaryName '/usr/bin/nvidia-container-runtime'" in wrong
    assert dumped_handler_problem(DUMP_V2, "", RUNTIME) == ""


# ---------------------------------------------------------------------- 5: wrong types, version, BOM


WRONG = [
    (CONFIG, b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\nruntimes = 5\n', "containerd.runtimes"),
    (CONFIG, b'version = 2\nplugins = "x"\n', "plugins: must be a table"),
    (CONFIG, b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\nnvidia = "oops"\n', "nvidia"),
    (CONFIG, b"version = 99\n", "version 99 is not a containerd config version"),
    (CONFIG, b'version = "2"\n', "version: must be a number"),
    ("/etc/crio/crio.conf", b"[crio.runtime]\nruntimes = 5\n", "crio.runtime.runtimes: must be a table"),
    ("/etc/crio/crio.conf", b'[crio.runtime.runtimes]\nnvidia = "oops"\n', "crio.runtime.runtimes.nvidia"),
    ("/etc/docker/daemon.json", b'{"runtimes": 5}\n', "runtimes must be an object"),
]


@pytest.mark.parametrize(("path", "data", "key"), WRONG, ids=[w[2][:30] for w in WRONG])
async def test_wrong_value_types_name_file_and_key(node_factory: Any, path: str, data: bytes, key: str) -> None:
    node = node_factory({path: data})
    before = node.snapshot()
    plan = await plan_of(node)
    assert plan.error.startswith(path) and key in plan.error, plan.error
    assert not plan.steps and node.sub.bad_input
    assert node.snapshot() == before


def nodeagent(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process (its logging setup stays out of this test process)."""
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_wrong_type_through_the_cli_exits_2_without_traceback(tmp_path: Any) -> None:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(WRONG[0][1])
    settings = tmp_path / "nodeagent.toml"
    settings.write_text('version = 1\n[runtime]\ncontainerd_version = "1.6.20"\n')
    for command in ("plan", "apply"):
        done = nodeagent(command, "--only", "runtime", "--root", str(root), "--config", str(settings))
        said = done.stdout + done.stderr
        assert done.returncode == 2, said
        assert "Traceback" not in said
        assert "/etc/containerd/config.toml" in said and "containerd.runtimes: must be a table" in said
    assert (root / "etc/containerd/config.toml").read_bytes() == WRONG[0][1]


@pytest.mark.parametrize(
    ("path", "data"),
    [(CONFIG, b"\xef\xbb\xbfversion = 2\n"), ("/etc/docker/daemon.json", b'\xef\xbb\xbf{\n    "a": 1\n}\n')],
)
async def test_utf8_bom_is_read_and_kept(node_factory: Any, path: str, data: bytes) -> None:
    node = node_factory({path: data}, containerd_version="1.6.20")
    plan = await plan_of(node)
    assert not plan.error, plan.error
    await node.sub.apply(plan)
    written = node.read(path)
    assert written.startswith(b"\xef\xbb\xbf") and written.count(b"\xef\xbb\xbf") == 1
    assert b"nvidia" in written
    assert (await plan_of(node)).empty


def _many_dropins(count: int) -> dict[str, bytes]:
    files = {CONFIG: b'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'}
    for i in range(count):
        files[f"/etc/containerd/conf.d/{i:04d}.toml"] = b"version = 2\n"
    last = f"/etc/containerd/conf.d/{count - 1:04d}.toml"
    files[last] = b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "nvidia"\n'
    return files


async def test_more_than_256_dropins_are_all_read(node_factory: Any) -> None:
    node = node_factory(_many_dropins(300), containerd_version="2.0.4")
    plan = await plan_of(node)
    assert not plan.error, plan.error
    # only the 300th file sets the default: seeing it proves every file was read
    assert any("default_runtime_name = 'nvidia'" in w for w in plan.warnings), plan.warnings
    assert any("effective config checked" in e and "(302 files)" in e for e in plan.evidence), plan.evidence


async def test_too_many_imported_files_is_a_named_refusal(node_factory: Any, monkeypatch: Any) -> None:
    from nodeagent.runtime import containerd

    monkeypatch.setattr(containerd, "MAX_IMPORT_FILES", 40)
    node = node_factory(_many_dropins(60), containerd_version="2.0.4")
    plan = await plan_of(node)
    assert plan.error.startswith(f"{CONFIG}: imports: imports load more than 40 files"), plan.error
    assert node.sub.bad_input
