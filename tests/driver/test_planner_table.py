"""The driver planner as a table: node state and settings in, steps and failures out (pure, no subsystem)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.driver import planner
from nodeagent.driver.observe import gather
from nodeagent.settings import Settings, replace

VERSION = "580.159.04"


def full_node(root: Root, mig_on: tuple[int, ...] = ()) -> None:
    sandbox.populate_sandbox(root, sandbox.sandbox_inventory(2, mig_on=mig_on))


def no_modules(root: Root) -> None:
    inv = sandbox.sandbox_inventory(2)
    sandbox.write_driver_files(root, "/", VERSION)
    sandbox.write_kernel_state(root, inv, modules=())


def uvm_node_missing(root: Root) -> None:
    full_node(root)
    (root.path / "dev/nvidia-uvm").unlink()


def library_upgraded(root: Root) -> None:
    inv = sandbox.sandbox_inventory(2, driver_version=VERSION)
    sandbox.write_driver_files(root, "/", "580.126.09")
    sandbox.write_kernel_state(root, inv)
    sandbox.write_device_placeholders(root, inv)


def nouveau_loaded(root: Root) -> None:
    sandbox.write_driver_files(root, "/", VERSION)
    root.write_atomic("/proc/modules", b"nouveau 2301952 0 - Live 0xffffffffc0a00000\n")
    root.write_atomic("/sys/module/nouveau/initstate", b"live\n")


def no_driver(root: Root) -> None:
    root.write_atomic("/proc/modules", b"")


@dataclass(frozen=True)
class Case:
    name: str
    node: Callable[[Root], None]
    driver: dict[str, Any] = field(default_factory=dict)
    steps: tuple[tuple[str, str], ...] = ()
    failure: str = ""
    """A substring of the joined failures; empty: no failure."""


CASES = (
    Case("ready node: nothing to do", full_node),
    Case(
        "MIG on GPU 0: its capability nodes",
        lambda r: full_node(r, mig_on=(0,)),
        steps=tuple(("create-device-node", f"/dev/nvidia-caps/nvidia-cap{m}") for m in (12, 13, 21, 22)),
    ),
    Case("a missing uvm node is created", uvm_node_missing, steps=(("create-device-node", "/dev/nvidia-uvm"),)),
    Case(
        "modules missing, loading allowed: in order",
        no_modules,
        {"load_modules": True},
        steps=(("load-module", "nvidia"), ("load-module", "nvidia-uvm"), ("load-module", "nvidia-modeset")),
    ),
    Case(
        "modules missing, RDMA: peermem last",
        no_modules,
        {"load_modules": True, "enable_rdma": True},
        steps=(
            ("load-module", "nvidia"),
            ("load-module", "nvidia-uvm"),
            ("load-module", "nvidia-modeset"),
            ("load-module", "nvidia-peermem"),
        ),
    ),
    Case("modules missing, loading not allowed", no_modules, failure="driver.load_modules is false"),
    Case("library newer than the module", library_upgraded, failure="driver/library version mismatch"),
    Case("minimum version not met", full_node, {"min_version": "590"}, failure="older than the minimum 590"),
    Case("nouveau holds the GPUs", nouveau_loaded, {"load_modules": True}, failure="blacklist nouveau"),
    Case("no driver at all", no_driver, failure="no NVIDIA driver"),
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_driver_plan(case: Case, tmp_path: Path) -> None:
    root = Root(tmp_path)
    case.node(root)
    settings = replace(Settings(), "driver", **case.driver) if case.driver else Settings()
    observed = gather(root, driver_root=settings.driver.root, dev_root=settings.driver.dev_root)
    assessment = planner.assess(observed, settings)
    plan = planner.build_plan(assessment, observed)
    assert [(s.action, s.target) for s in plan.steps] == list(case.steps)
    if case.failure:
        assert case.failure in plan.error, plan.error
        assert not plan.steps, "a failure plans nothing"
    else:
        assert (plan.error == "" and assessment.facts is not None) or any(s.action == "load-module" for s in plan.steps)
    assert planner.build_plan(planner.assess(observed, settings), observed) == plan, "pure: same input, same plan"
