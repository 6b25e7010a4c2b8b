"""The one function the composition root calls to get the agent's Kubernetes client (or none).

``mode``: ``in-cluster`` (the pod's service account), ``kubeconfig`` (a file: a user's, the kubelet's on
bare metal, or one pointing at the test API server), ``auto`` (in-cluster when running in a pod, else
the kubeconfig when one is set, else none) or ``off``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from nodeagent.errors import ConfigError
from nodeagent.kube import credentials
from nodeagent.kube.client import FunnelSettings, KubeClient


class KubeSettingsLike(Protocol):
    """The ``kube`` settings section, as far as the client needs it."""

    @property
    def mode(self) -> str: ...
    @property
    def kubeconfig(self) -> str: ...
    @property
    def context(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...


def make_client(
    settings: KubeSettingsLike,
    *,
    resolve: Callable[[str], Path] = Path,
    env: Mapping[str, str] | None = None,
    sa_dir: str = credentials.SERVICE_ACCOUNT_DIR,
) -> KubeClient | None:
    """A client for ``settings`` (the ``kube`` section), or None when Kubernetes is off or absent.
    ``resolve`` maps host paths (the kubeconfig) through the agent's Root. Raises ConfigError."""
    env = os.environ if env is None else env
    mode = settings.mode
    if mode == "off":
        return None
    if mode == "auto":
        if env.get("KUBERNETES_SERVICE_HOST"):
            mode = "in-cluster"
        elif settings.kubeconfig:
            mode = "kubeconfig"
        else:
            return None
    if mode == "in-cluster":
        creds = credentials.in_cluster(env, sa_dir)
    elif mode == "kubeconfig":
        if not settings.kubeconfig:
            raise ConfigError("mode kubeconfig needs kube.kubeconfig", key="kube.kubeconfig")
        creds = credentials.from_kubeconfig(settings.kubeconfig, context=settings.context, resolve=resolve)
    else:
        raise ConfigError(f"unknown mode {mode!r}", key="kube.mode")
    if settings.namespace:
        creds.namespace = settings.namespace
    funnel = FunnelSettings(timeout_s=settings.timeout_s, max_attempts=settings.max_attempts)
    return KubeClient(creds, settings=funnel)
