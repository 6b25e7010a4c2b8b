"""integration/deploy: the manifests, the systemd unit, the docs' commands, and the image (built once per
session by integration/conftest.py's ``image`` fixture) run in a real containerd the way the DaemonSet would."""

from __future__ import annotations

from integration.runtime.conftest import containerd_factory

__all__ = ["containerd_factory"]  # the runtime tests' fixture: containerd in its own temporary root
