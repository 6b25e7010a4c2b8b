"""The cluster's containerd: a CDI-capable release (``CONTAINERD_VERSION`` in versions.env, built from its Go module
by build_containerd.sh through ``cluster.build_containerd``) instead of the distribution's 1.6, which ignores the
CRI's ``CDIDevices``, the one field through which the kubelet (1.31 and later) hands a container its DRA claim's
CDI devices.

`containerd_config` is the whole configuration (version 4, containerd 2.4's own format), pure: every host path under
the cluster's ``base``, the shim, ``runc`` and the CDI spec directories named explicitly (containerd 2 always
injects CDI devices, from ``CDIDevices`` and from ``cdi.k8s.io/*`` annotations alike, and fails a container whose
devices no spec in those directories names). The integration/runtime tests keep the distribution's containerd:
they test the agent's runtime configuration against it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from integration.runtime.conftest import Containerd

CONFIG_VERSION = 4
RUNTIMES = "io.containerd.cri.v1.runtime"


def _runtime(shim: Path, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"runtime_type": "io.containerd.runc.v2", "runtime_path": str(shim), **extra, "options": options}


def containerd_config(
    base: Path,
    socket_host: str,
    *,
    bin_dir: Path,
    sandbox_image: str,
    cdi_spec_dirs: list[Path],
    cdi_handler: str,
    cdi_runtime: Path,
    runc: str,
) -> str:
    """The cluster's config.toml. ``cdi_handler``: an extra runtime handler whose runc is ``cdi_runtime`` (a
    program a test puts there) and which passes the ``cdi.k8s.io/*`` annotations on to the OCI spec."""
    sock = f"{base}{socket_host}"
    shim = bin_dir / "containerd-shim-runc-v2"
    doc: dict[str, Any] = {
        "version": CONFIG_VERSION,
        "root": f"{base}/var/lib/containerd",
        "state": f"{base}/run/containerd",
        "imports": [],  # the default reads the machine's /etc/containerd/conf.d
        "plugins": {
            "io.containerd.server.v1.grpc": {"address": sock},
            "io.containerd.server.v1.ttrpc": {"address": f"{sock}.ttrpc"},
            "io.containerd.internal.v1.opt": {"path": f"{base}/opt/containerd"},
            "io.containerd.image-verifier.v1.bindir": {"bin_dir": f"{base}/opt/containerd/image-verifier/bin"},
            "io.containerd.nri.v1.nri": {"disable": True},
            "io.containerd.cri.v1.images": {"pinned_images": {"sandbox": sandbox_image}},
            RUNTIMES: {
                # the sandbox's oom_score_adj of -998 needs CAP_SYS_RESOURCE, which test machines may not grant
                "restrict_oom_score_adj": True,
                "cdi_spec_dirs": [str(d) for d in cdi_spec_dirs],
                "cni": {"bin_dirs": [f"{base}/opt/cni/bin"], "conf_dir": f"{base}/etc/cni/net.d"},
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": _runtime(shim, {"BinaryName": runc, "SystemdCgroup": False}),
                        cdi_handler: _runtime(
                            shim, {"BinaryName": str(cdi_runtime)}, container_annotations=["cdi.k8s.io/*"]
                        ),
                    },
                },
            },
        },
    }
    return tomlkit.dumps(doc)


@dataclass
class ClusterContainerd(Containerd):
    """The built containerd: its own ``ctr`` (``bin_dir``), the distribution's may be older than the daemon."""

    bin_dir: Path = Path()

    def ctr(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / "ctr"), "--address", str(self.sock), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)
