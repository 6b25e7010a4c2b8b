"""Fakes shared by the driver and CDI tests: a GPU backend serving a fixed inventory, a Context on a
sandbox root, and the layouts of real driver roots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.model.gpu import Inventory
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Context


def make_settings(driver: dict[str, Any] | None = None, cdi: dict[str, Any] | None = None) -> Settings:
    settings = Settings()
    if driver:
        settings = replace(settings, "driver", **driver)
    if cdi:
        settings = replace(settings, "cdi", **cdi)
    return settings


def make_ctx(path: Path, inventory: Inventory, settings: Settings | None = None) -> Context:
    return testing.context(Root(path), settings or make_settings(), inventory=inventory)


def host_node(path: Path, inventory: Inventory, **kernel: Any) -> Root:
    """A node whose driver is installed on the host (/usr/lib/x86_64-linux-gnu, /usr/bin)."""
    root = Root(path)
    sandbox.write_driver_files(root, "/", inventory.driver_version, layout="debian")
    sandbox.write_kernel_state(root, inventory, **kernel)
    sandbox.write_device_placeholders(root, inventory)
    return root


def prefixed_node(path: Path, inventory: Inventory, prefix: str, layout: sandbox.Layout, **kernel: Any) -> Root:
    """A node whose driver lives under ``prefix`` (driver container, GKE, /usr/local/nvidia)."""
    root = Root(path)
    sandbox.write_driver_files(root, prefix, inventory.driver_version, layout=layout)
    sandbox.write_kernel_state(root, inventory, **kernel)
    sandbox.write_device_placeholders(root, inventory)
    return root


DATA = Path(__file__).parent / "data"


def real_usr_local_nvidia(path: Path) -> Root:
    """/usr/local/nvidia exactly as listed on our H100 machine (files, symlinks, lib -> lib64)."""
    root = Root(path)
    base = root.resolve("/usr/local/nvidia")
    for line in (DATA / "usr-local-nvidia-listing.txt").read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("f", "l"):
            continue
        name, _, target = rest.strip().partition(" ")
        local = base / name.removeprefix("./")
        local.parent.mkdir(parents=True, exist_ok=True)
        if kind == "f":
            local.write_bytes(b"\x7fELF stub\n")
        else:
            local.symlink_to(target)
    return root
