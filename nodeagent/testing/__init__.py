"""Builders for tests of nodeagent and of code built on it (kopf's ``testing`` module is the model).

Everything here is built the way the composition root builds the agent, with the simulator's parts, so a
test exercises the same wiring as ``nodeagent run --simulate``:

- ``sim_gpus``: an opened-on-demand simulated GPU backend (any built-in profile, count, MIG layout);
- ``FixedInventory``: a backend that serves one given inventory and samples nothing (for planners that
  only need GPU facts);
- ``ScriptedGpus`` (``nodeagent.testing.scripted``): exact readings set by the test, for checks of
  rendered values, which the simulator's moving physical model cannot give;
- ``context``: a complete ``Context`` on a root, with simulated runtime control, modprobe and device nodes;
- ``parts``: a context and subsystems, ready for ``Agent`` or the one-shot commands.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from nodeagent.backends.gpu.protocols import GpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.kmod import ModuleLoader
from nodeagent.backends.runtimectl import RuntimeControl
from nodeagent.compose import Parts, build_context, simulated_backends
from nodeagent.model.gpu import Inventory, Sample, SampleRequest
from nodeagent.settings import Settings
from nodeagent.subsystem import Context, Service
from nodeagent.testing.scripted import ScriptedGpus

__all__ = ["FixedInventory", "ScriptedGpus", "context", "parts", "sim_gpus"]


def sim_gpus(
    count: int = 2, profile: str = "h100-80gb-hbm3", *, seed: int = 0, mig_layout: str = "", **kwargs: Any
) -> GpuBackend:
    """The simulator with ``count`` GPUs of ``profile`` (not opened: ``context`` and the agent open it)."""
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend

    return SimGpuBackend(profile, count, seed, mig_layout=mig_layout, **kwargs)


class FixedInventory:
    """A GPU backend serving one inventory; ``sample`` reads nothing (what a planner test needs)."""

    kind = "fixed"

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self.closed = False

    def serve(self, inventory: Inventory) -> None:
        """From now on report ``inventory`` (a MIG change, a GPU gone)."""
        self._inventory = inventory

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True

    async def inventory(self) -> Inventory:
        return self._inventory

    async def sample(self, request: SampleRequest) -> Sample:
        return Sample(taken_at=0.0, gpus={})


def context(
    root: Root | Path | str,
    settings: Settings | None = None,
    *,
    gpus: GpuBackend | None = None,
    inventory: Inventory | None = None,
    runtime_control: RuntimeControl | None = None,
    module_loader: ModuleLoader | None = None,
    node_name: str = "node-a",
    registry: CollectorRegistry | None = None,
    runtime_devices: bool = False,
) -> Context:
    """A complete context on ``root`` with the simulator's parts; any part may be replaced.

    The CDI spec names the root's device nodes as a node's spec does, unless ``runtime_devices``: then, as in
    ``nodeagent run --simulate``, it names the sandbox's runtime device nodes (``Backends.runtime_device_dir``).

    ``inventory`` (when given) seeds the GPU-state owner, as the composition root does after opening the
    backend; without ``gpus`` the backend then serves exactly that inventory.
    """
    root = root if isinstance(root, Root) else Root(Path(root))
    settings = settings or Settings()
    if gpus is None:
        gpus = FixedInventory(inventory) if inventory is not None else sim_gpus()
    base = simulated_backends(settings, root, gpus, inventory)
    backends = dataclasses.replace(
        base,
        runtime_control=runtime_control or base.runtime_control,
        module_loader=module_loader or base.module_loader,
        runtime_device_dir=base.runtime_device_dir if runtime_devices else "",
    )
    ctx = build_context(settings, root=root, backends=backends, node_name=node_name, registry=registry)
    if inventory is not None:
        ctx.gpu_state.seed(inventory)
    return ctx


def parts(ctx: Context, subsystems: list[Service], *, simulated: bool = True) -> Parts:
    return Parts(ctx=ctx, subsystems=subsystems, simulated=simulated)
