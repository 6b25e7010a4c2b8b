"""Two subsystems may never own one path: such settings are refused (exit 2), naming both keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.errors import ConfigError
from nodeagent.runtime.ownership import check_owned_paths
from nodeagent.settings import Settings, replace


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("cdi", {"spec_path": "/etc/containerd/config.toml"}, "cdi.spec_path: '/etc/containerd/config.toml'"),
        ("cdi", {"spec_path": "/etc/crio/crio.conf.d/nvidia.yaml"}, "the runtime subsystem"),
        ("cdi", {"spec_path": "/var/lib/nodeagent/backups/index.json"}, "agent.state_dir"),
    ],
)
def test_overlapping_paths_are_refused(section: str, values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="two subsystems may never write one path") as refused:
        check_owned_paths(replace(Settings(), section, **values))
    assert message in str(refused.value)


def test_runtime_config_path_equal_to_the_cdi_spec_is_refused() -> None:
    settings = replace(Settings(), "runtime", config_path="/opt/k8s/containerd.toml")
    settings = replace(settings, "cdi", spec_path="/opt/k8s/containerd.toml")
    with pytest.raises(ConfigError) as refused:
        check_owned_paths(settings)
    assert "cdi.spec_path" in str(refused.value) and "runtime.config_path" in str(refused.value)


def test_defaults_and_separate_paths_pass() -> None:
    check_owned_paths(Settings())
    check_owned_paths(replace(Settings(), "cdi", spec_path="/etc/cdi/nvidia.yaml"))
    check_owned_paths(replace(Settings(), "cdi", enabled=False, spec_path="/etc/containerd/config.toml"))


def test_the_cli_refuses_such_settings_with_exit_2(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(b"version = 2\n")
    settings = tmp_path / "nodeagent.toml"
    settings.write_text('version = 1\n[cdi]\nspec_path = "/etc/containerd/config.toml"\n')
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent", "apply", "--root", str(root), "--config", str(settings)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "bad settings" in done.stderr and "cdi.spec_path" in done.stderr and "Traceback" not in done.stderr
    assert (root / "etc/containerd/config.toml").read_bytes() == b"version = 2\n"
