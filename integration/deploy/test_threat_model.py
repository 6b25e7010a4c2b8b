"""Claims of docs/threat-model.md that no other test holds: where the agent listens by default, and that
the CDI spec it hands to the runtime selects devices by name and runs no hook that could read a
container's environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodeagent.settings import Settings

from .test_systemd import UNIT, directives

pytestmark = pytest.mark.integration


def test_the_default_listen_address_is_loopback_and_the_unit_keeps_it() -> None:
    assert Settings().agent.listen.startswith("127.0.0.1:")
    (exec_start,) = directives(UNIT.read_text())["ExecStart"]
    assert "--listen" not in exec_start  # bare metal: only local scrapers (a node exporter's proxy)


def test_cdi_spec_selects_devices_by_name_and_no_hook_reads_the_container_environment(tmp_path: Path) -> None:
    out = tmp_path / "spec.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nodeagent",
            "cdi",
            "generate",
            "--simulate",
            "--root",
            str(tmp_path / "node"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load(out.read_text())
    assert "nvidia-container-runtime-hook" not in json.dumps(spec)  # the legacy hook that reads the env
    edits = [spec["containerEdits"], *(d["containerEdits"] for d in spec["devices"])]
    # Devices come from CDI names the kubelet asked for; the container's env is pinned to `void` so that a
    # legacy hook configured alongside injects nothing on top of them, whatever the image's ENV says.
    container_env = [v for e in edits for v in e.get("env", []) if v.startswith("NVIDIA_VISIBLE_DEVICES=")]
    assert container_env == ["NVIDIA_VISIBLE_DEVICES=void"]
    hooks = [h for e in edits for h in e.get("hooks", [])]
    assert hooks, "the spec is expected to carry nvidia-ctk's hooks"
    # nvidia-ctk's own subcommands, none of which reads the container's environment, each with an
    # environment fixed in the spec
    allowed = {
        "create-symlinks",
        "enable-cuda-compat",
        "update-ldcache",
        "disable-device-node-modification",
        "update-application-profile",  # reads the container's /dev, writes one profile file in its root
    }
    assert {h["args"][1] for h in hooks} == allowed
    for hook in hooks:
        assert hook["path"] == Settings().cdi.hook_path
        assert hook["args"][0] == "nvidia-cdi-hook" and hook["args"][1] in allowed, hook
        assert hook.get("env", []) == ["NVIDIA_CTK_DEBUG=false"], hook
