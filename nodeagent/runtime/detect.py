"""Which runtime and which containerd distribution a node runs, from the files on disk, with evidence.

``PROBED`` lists every host path looked at; the subsystem records for each whether it is a file, a
directory or a socket (``Probe``), and reads the few small files whose content matters. ``detect`` is a
pure function of that snapshot and the settings, so every layout is testable without a host.
"""

from __future__ import annotations

import posixpath
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from nodeagent.errors import ConfigError
from nodeagent.settings import RuntimeSettings

Kind = Literal["file", "dir", "socket", "other"]


@dataclass(frozen=True)
class Distro:
    name: str
    config: str
    socket: str
    service: str
    binaries: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    """Paths whose presence identifies the distribution."""
    dropin_dir: str = ""
    template_dir: str = ""
    template: str = ""
    generated: str = ""


K3S_DIR = "/var/lib/rancher/k3s/agent/etc/containerd"
RKE2_DIR = "/var/lib/rancher/rke2/agent/etc/containerd"
MICROK8S_ARGS = "/var/snap/microk8s/current/args"

DISTROS: dict[str, Distro] = {
    "k0s": Distro(
        "k0s",
        "/etc/k0s/containerd.toml",
        "/run/k0s/containerd.sock",
        "k0sworker",
        ("/var/lib/k0s/bin/containerd",),
        ("/etc/k0s/containerd.toml", "/run/k0s/containerd.sock", "/var/lib/k0s/bin/containerd"),
        dropin_dir="/etc/k0s/containerd.d",
    ),
    "k3s": Distro(
        "k3s",
        f"{K3S_DIR}/config.toml.tmpl",
        "/run/k3s/containerd/containerd.sock",
        "k3s",
        ("/var/lib/rancher/k3s/data/current/bin/containerd",),
        (f"{K3S_DIR}/config.toml", f"{K3S_DIR}/config.toml.tmpl", f"{K3S_DIR}/config-v3.toml.tmpl"),
        template_dir=K3S_DIR,
        template="go",
        generated=f"{K3S_DIR}/config.toml",
    ),
    "rke2": Distro(
        "rke2",
        f"{RKE2_DIR}/config.toml.tmpl",
        "/run/k3s/containerd/containerd.sock",
        "rke2-server",
        ("/var/lib/rancher/rke2/bin/containerd",),
        (f"{RKE2_DIR}/config.toml", f"{RKE2_DIR}/config.toml.tmpl", f"{RKE2_DIR}/config-v3.toml.tmpl"),
        template_dir=RKE2_DIR,
        template="go",
        generated=f"{RKE2_DIR}/config.toml",
    ),
    "microk8s": Distro(
        "microk8s",
        f"{MICROK8S_ARGS}/containerd-template.toml",
        "/var/snap/microk8s/common/run/containerd.sock",
        "snap.microk8s.daemon-containerd",
        ("/snap/microk8s/current/bin/containerd",),
        (f"{MICROK8S_ARGS}/containerd-template.toml",),
        template="vars",
        generated=f"{MICROK8S_ARGS}/containerd.toml",
    ),
    "plain": Distro(
        "plain",
        "/etc/containerd/config.toml",
        "/run/containerd/containerd.sock",
        "containerd",
        ("/usr/bin/containerd", "/usr/local/bin/containerd"),
        ("/etc/containerd/config.toml", "/run/containerd/containerd.sock"),
    ),
}
CRIO = Distro(
    "crio",
    "/etc/crio/crio.conf",
    "/var/run/crio/crio.sock",
    "crio",
    ("/usr/bin/crio", "/usr/local/bin/crio"),
    ("/etc/crio/crio.conf", "/etc/crio/crio.conf.d", "/var/run/crio/crio.sock"),
)
DOCKER = Distro(
    "docker",
    "/etc/docker/daemon.json",
    "/var/run/docker.sock",
    "docker",
    ("/usr/bin/dockerd",),
    ("/etc/docker/daemon.json", "/var/run/docker.sock"),
)
SYSTEMD_UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
ALT_SERVICES = {
    "k3s": ("k3s", "k3s-agent"),
    "rke2": ("rke2-server", "rke2-agent"),
    "k0s": ("k0sworker", "k0scontroller"),
}

PROBED: tuple[str, ...] = tuple(
    dict.fromkeys(
        [m for d in (*DISTROS.values(), CRIO, DOCKER) for m in d.markers]
        + [f"{K3S_DIR}/config-v3.toml.tmpl", f"{RKE2_DIR}/config-v3.toml.tmpl"]
        + [f"{d}/{s}.service" for d in SYSTEMD_UNIT_DIRS for names in ALT_SERVICES.values() for s in names]
    )
)
READ: tuple[str, ...] = (
    "/etc/containerd/config.toml",
    "/etc/k0s/containerd.toml",
    f"{K3S_DIR}/config.toml",
    f"{RKE2_DIR}/config.toml",
)
"""Small files whose content helps detection (read only when present)."""


@dataclass(frozen=True)
class Probe:
    kinds: Mapping[str, Kind] = field(default_factory=dict)
    texts: Mapping[str, bytes] = field(default_factory=dict)

    def has(self, path: str) -> bool:
        return path in self.kinds


@dataclass(frozen=True)
class Detected:
    engine: Literal["containerd", "crio", "docker"]
    distribution: str
    config_path: str
    socket: str
    service: str
    binaries: tuple[str, ...]
    evidence: tuple[str, ...]
    dropin_dir: str = ""
    template: str = ""
    generated: str = ""
    reload: bool = False
    """The daemon re-reads its config on SIGHUP (crio, dockerd) instead of being restarted."""


def _present(probe: Probe, distro: Distro) -> list[str]:
    return [m for m in distro.markers if probe.has(m)]


def _cri_disabled(probe: Probe) -> bool:
    data = probe.texts.get("/etc/containerd/config.toml")
    if not data:
        return False
    try:
        doc = tomllib.loads(data.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError:
        return False
    disabled = doc.get("disabled_plugins") or []
    return isinstance(disabled, list) and ("cri" in disabled or "io.containerd.grpc.v1.cri" in disabled)


def detect(probe: Probe, settings: RuntimeSettings) -> Detected:
    """Choose engine and layout; settings win over detection. Raises ConfigError when nothing is found."""
    evidence: list[str] = []
    engine: str = settings.engine
    distro: Distro | None = None
    if settings.distribution != "auto":
        distro = DISTROS[settings.distribution]
        evidence.append(f"distribution {distro.name} (from settings runtime.distribution)")
        if engine == "auto":
            engine = "containerd"
    if engine == "auto":
        engine, distro = _auto(probe, evidence)
    elif engine == "containerd" and distro is None:
        distro = next((d for d in DISTROS.values() if d.name != "plain" and _present(probe, d)), DISTROS["plain"])
        found = _present(probe, distro)
        evidence.append(
            f"distribution {distro.name}: " + (", ".join(f"{p} exists" for p in found) if found else "default layout")
        )
    elif engine != "containerd":
        distro = CRIO if engine == "crio" else DOCKER
        evidence.append(f"engine {engine} (from settings runtime.engine)")
    assert distro is not None
    if engine == "containerd" and settings.engine != "auto":
        evidence.append("engine containerd (from settings runtime.engine)")
    config = settings.config_path or _config_for(probe, distro, evidence)
    socket = settings.socket or distro.socket
    template = distro.template
    if distro.template == "go" and not config.endswith(".tmpl"):
        template = ""
    if settings.config_path:
        evidence.append(f"config {config} (from settings runtime.config_path)")
    if settings.socket:
        evidence.append(f"socket {socket} (from settings runtime.socket)")
    return Detected(
        engine=engine,  # type: ignore[arg-type]
        distribution=distro.name if engine == "containerd" else engine,
        config_path=config,
        socket=socket,
        service=_service(probe, distro),
        binaries=distro.binaries,
        evidence=tuple(evidence),
        dropin_dir=distro.dropin_dir,
        template=template,
        generated=distro.generated,
        reload=engine in ("crio", "docker"),
    )


def _auto(probe: Probe, evidence: list[str]) -> tuple[str, Distro]:
    for distro in (DISTROS["k0s"], DISTROS["k3s"], DISTROS["rke2"], DISTROS["microk8s"]):
        found = _present(probe, distro)
        if found:
            evidence.append(f"distribution {distro.name}: " + ", ".join(f"{p} exists" for p in found))
            if distro.name == "k0s" and b"k0s_managed=true" in probe.texts.get(distro.config, b""):
                evidence.append(f"{distro.config} carries the k0s_managed=true marker")
            return "containerd", distro
    crio = _present(probe, CRIO)
    if crio:
        evidence.append("engine crio: " + ", ".join(f"{p} exists" for p in crio))
        return "crio", CRIO
    plain = _present(probe, DISTROS["plain"])
    docker = _present(probe, DOCKER)
    if plain and not (docker and _cri_disabled(probe)):
        evidence.append("distribution plain containerd: " + ", ".join(f"{p} exists" for p in plain))
        if docker:
            evidence.append("docker is present too; containerd (with its CRI plugin) is the one kubelet uses")
        return "containerd", DISTROS["plain"]
    if docker:
        evidence.append("engine docker: " + ", ".join(f"{p} exists" for p in docker))
        if plain:
            evidence.append("/etc/containerd/config.toml disables the CRI plugin: that containerd serves docker")
        return "docker", DOCKER
    looked = ", ".join(sorted({m for d in (*DISTROS.values(), CRIO, DOCKER) for m in d.markers}))
    raise ConfigError(f"no container runtime found; looked for {looked}; set runtime.engine", key="runtime.engine")


def _config_for(probe: Probe, distro: Distro, evidence: list[str]) -> str:
    if distro.template != "go":
        return distro.config
    v3 = posixpath.join(distro.template_dir, "config-v3.toml.tmpl")
    v2 = posixpath.join(distro.template_dir, "config.toml.tmpl")
    generated = probe.texts.get(distro.generated, b"")
    gen_v3 = b"version = 3" in generated
    if probe.has(v3) and (gen_v3 or not probe.has(v2)):
        chosen = v3
    elif probe.has(v2):
        chosen = v2
    else:
        chosen = v3 if gen_v3 else v2
    evidence.append(f"template {chosen} ({'exists' if probe.has(chosen) else 'will be created'})")
    return chosen


def _service(probe: Probe, distro: Distro) -> str:
    for name in ALT_SERVICES.get(distro.name, ()):
        if any(probe.has(f"{d}/{name}.service") for d in SYSTEMD_UNIT_DIRS):
            return name
    return distro.service
