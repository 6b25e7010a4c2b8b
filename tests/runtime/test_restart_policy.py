"""The restart policy as a table: settings x layout -> how the daemon learns of the change, and the step.

Columns: runtime.restart, a restart_command set?, the detected layout (engine/distribution), then the
RestartHow chosen and the plan's last step (action, disruption). Every row also runs through the real
planner on a node of that layout, so the table is what `nodeagent plan` shows.
"""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.plan import Disruption
from nodeagent.runtime.restart import restart_policy

from .conftest import fixture

V16 = fixture("containerd-1.6.20-default.toml")
LAYOUTS: dict[str, dict[str, bytes]] = {
    "containerd": {"/etc/containerd/config.toml": V16},
    "k0s": {
        "/etc/k0s/containerd.toml": fixture("k0s/containerd.toml"),
        "/etc/k0s/containerd.d/10-registry.toml": fixture("k0s/10-registry.toml"),
    },
    "crio": {"/etc/crio/crio.conf": fixture("crio/crio.conf")},
    "docker": {"/etc/docker/daemon.json": fixture("docker/daemon-2space.json")},
}
R, RL, N = Disruption.RESTART, Disruption.RELOAD, Disruption.NONE

TABLE = [
    # restart   command layout        how        last step          disruption
    ("auto", False, "containerd", "systemd", "restart-runtime", R),
    ("systemd", False, "containerd", "systemd", "restart-runtime", R),
    ("auto", True, "containerd", "command", "restart-runtime", R),
    ("systemd", True, "containerd", "command", "restart-runtime", R),
    ("signal", False, "containerd", "signal", "restart-runtime", R),
    ("none", False, "containerd", "none", "no-restart", N),
    ("none", True, "containerd", "none", "no-restart", N),
    ("auto", False, "k0s", "none", "wait-runtime", R),
    ("systemd", False, "k0s", "systemd", "restart-runtime", R),
    ("auto", False, "crio", "signal", "reload-runtime", RL),
    ("systemd", False, "crio", "systemd", "reload-runtime", RL),
    ("auto", True, "crio", "command", "reload-runtime", RL),
    ("none", False, "crio", "none", "no-restart", N),
    ("auto", False, "docker", "signal", "reload-runtime", RL),
    ("signal", False, "docker", "signal", "reload-runtime", RL),
]


@pytest.mark.parametrize(("mode", "command", "layout", "how", "action", "disruption"), TABLE)
async def test_restart_policy(
    node_factory: Any, mode: str, command: bool, layout: str, how: str, action: str, disruption: Disruption
) -> None:
    reload = layout in ("crio", "docker")
    distribution = "k0s" if layout == "k0s" else layout
    assert restart_policy(mode, command, distribution=distribution, reload=reload) == how
    settings: dict[str, Any] = {"restart": mode, "containerd_version": "1.6.20"}
    if command:
        settings["restart_command"] = ["/usr/local/bin/restart-runtime"]
    node = node_factory(LAYOUTS[layout], **settings)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    last = plan.steps[-1]
    assert (last.action, last.disruption) == (action, disruption)
    assert last.payload.restart == how
    await node.sub.apply(plan)
    assert len(node.control.restarts) == (0 if how == "none" else 1)
