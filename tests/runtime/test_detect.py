"""Distribution and engine detection from a snapshot of the host's files, with settings overrides."""

from __future__ import annotations

import pytest

from nodeagent.errors import ConfigError
from nodeagent.runtime.detect import K3S_DIR, MICROK8S_ARGS, RKE2_DIR, Probe, detect
from nodeagent.settings import RuntimeSettings

from .conftest import fixture


def probe(*files: str, texts: dict[str, bytes] | None = None) -> Probe:
    kinds = {f: ("socket" if f.endswith(".sock") else "file") for f in files}
    return Probe(kinds, texts or {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("files", "engine", "distribution", "config", "socket", "service"),
    [
        (
            ["/etc/containerd/config.toml"],
            "containerd",
            "plain",
            "/etc/containerd/config.toml",
            "/run/containerd/containerd.sock",
            "containerd",
        ),
        (
            ["/etc/k0s/containerd.toml", "/run/k0s/containerd.sock", "/etc/containerd/config.toml"],
            "containerd",
            "k0s",
            "/etc/k0s/containerd.toml",
            "/run/k0s/containerd.sock",
            "k0sworker",
        ),
        (
            [f"{K3S_DIR}/config.toml", "/etc/systemd/system/k3s-agent.service"],
            "containerd",
            "k3s",
            f"{K3S_DIR}/config.toml.tmpl",
            "/run/k3s/containerd/containerd.sock",
            "k3s-agent",
        ),
        (
            [f"{K3S_DIR}/config.toml", f"{K3S_DIR}/config-v3.toml.tmpl"],
            "containerd",
            "k3s",
            f"{K3S_DIR}/config-v3.toml.tmpl",
            "/run/k3s/containerd/containerd.sock",
            "k3s",
        ),
        (
            [f"{RKE2_DIR}/config.toml"],
            "containerd",
            "rke2",
            f"{RKE2_DIR}/config.toml.tmpl",
            "/run/k3s/containerd/containerd.sock",
            "rke2-server",
        ),
        (
            [f"{MICROK8S_ARGS}/containerd-template.toml"],
            "containerd",
            "microk8s",
            f"{MICROK8S_ARGS}/containerd-template.toml",
            "/var/snap/microk8s/common/run/containerd.sock",
            "snap.microk8s.daemon-containerd",
        ),
        (
            ["/etc/crio/crio.conf", "/var/run/crio/crio.sock"],
            "crio",
            "crio",
            "/etc/crio/crio.conf",
            "/var/run/crio/crio.sock",
            "crio",
        ),
        (["/etc/docker/daemon.json"], "docker", "docker", "/etc/docker/daemon.json", "/var/run/docker.sock", "docker"),
    ],
    ids=["plain", "k0s-beats-plain", "k3s-agent", "k3s-v3-template", "rke2", "microk8s", "crio", "docker"],
)
def test_detects(files: list[str], engine: str, distribution: str, config: str, socket: str, service: str) -> None:
    d = detect(probe(*files), RuntimeSettings())
    assert (d.engine, d.distribution, d.config_path, d.socket, d.service) == (
        engine,
        distribution,
        config,
        socket,
        service,
    )
    assert any("exists" in e for e in d.evidence)


def test_rke2_with_v3_generated_config_picks_the_v3_template() -> None:
    d = detect(
        probe(f"{RKE2_DIR}/config.toml", texts={f"{RKE2_DIR}/config.toml": fixture("rke2/config.toml")}),
        RuntimeSettings(),
    )
    assert d.config_path == f"{RKE2_DIR}/config-v3.toml.tmpl"


def test_docker_host_whose_containerd_has_no_cri_is_docker() -> None:
    texts = {"/etc/containerd/config.toml": b'disabled_plugins = ["cri"]\n'}
    d = detect(
        probe("/etc/containerd/config.toml", "/run/containerd/containerd.sock", "/var/run/docker.sock", texts=texts),
        RuntimeSettings(),
    )
    assert d.engine == "docker"
    assert any("disables the CRI plugin" in e for e in d.evidence)


def test_containerd_with_cri_next_to_docker_is_containerd() -> None:
    d = detect(probe("/etc/containerd/config.toml", "/var/run/docker.sock"), RuntimeSettings())
    assert d.engine == "containerd"
    assert any("docker is present too" in e for e in d.evidence)


def test_settings_override_detection() -> None:
    s = RuntimeSettings(
        engine="containerd", distribution="k0s", config_path="/opt/k0s/containerd.toml", socket="/tmp/x.sock"
    )
    d = detect(probe("/etc/docker/daemon.json"), s)
    assert (d.engine, d.distribution, d.config_path, d.socket) == (
        "containerd",
        "k0s",
        "/opt/k0s/containerd.toml",
        "/tmp/x.sock",
    )
    assert d.dropin_dir == "/etc/k0s/containerd.d"
    assert any("from settings" in e for e in d.evidence)


def test_nothing_found() -> None:
    with pytest.raises(ConfigError, match="no container runtime found"):
        detect(probe(), RuntimeSettings())
