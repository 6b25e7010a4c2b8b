"""The GPU instances of dynamic MIG devices (``dra.dynamic_mig``; the plan is ``partitions.py``): made in
NodePrepareResources at the placement the scheduler allocated, destroyed in NodeUnprepareResources, through
the backend's ``MigControl`` (NVML, or the simulator) on its worker thread.

Per claim, one at a time per node (a lock): the claim's record goes to the checkpoint before the instance is
made (``record``), so a crash in between adopts the instance on the kubelet's retry instead of making a second;
the GPU-state owner then refreshes the inventory (``INVENTORY_CHANGED``: CDI, metrics, labels and the slices
follow), and the claim's CDI spec is written only once the node's CDI spec names the new instance (waited for,
``dra.claim_timeout_s``). An instance recorded but gone (a GPU reset, a reboot) is made again at its placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from nodeagent.aio import run_blocking
from nodeagent.backends.gpu.protocols import MigControl
from nodeagent.dra import partitions
from nodeagent.dra.checkpoint import MigInstance, PreparedClaim
from nodeagent.errors import ConfigError, MigOperationError
from nodeagent.model.gpu import Inventory
from nodeagent.subsystem import Context

log = structlog.get_logger(__name__)

Record = Callable[[PreparedClaim], Awaitable[None]]


class DynamicMig:
    def __init__(self, ctx: Context, *, node_spec_path: str, names_uuid: Callable[[str], bool]) -> None:
        self.ctx = ctx
        self.node_spec_path = node_spec_path
        self.names_uuid = names_uuid
        """Whether the node's CDI spec names a device UUID now (blocking)."""
        self._lock = asyncio.Lock()
        self.created = 0
        self.destroyed = 0

    def owned(self, prepared: dict[str, PreparedClaim]) -> dict[int, set[int]]:
        """GPU index → the GPU instances prepared claims own."""
        found: dict[int, set[int]] = {}
        for claim in prepared.values():
            for inst in claim.instances.values():
                if inst.gpu_instance_id is not None:
                    found.setdefault(inst.gpu_index, set()).add(inst.gpu_instance_id)
        return found

    def _control(self) -> MigControl:
        control = self.ctx.backends.mig_control
        if control is None:
            raise MigOperationError("dynamic MIG: this GPU backend cannot change MIG layouts")
        return control

    async def ensure(
        self, claim: PreparedClaim, prepared: Callable[[], dict[str, PreparedClaim]], record: Record
    ) -> PreparedClaim:
        """``claim`` with every dynamic MIG device's instance made (or adopted, or found still there)."""
        if not claim.instances:
            return claim
        async with self._lock:
            inventory = await self.ctx.gpu_state.refresh(raise_errors=True)
            assert inventory is not None
            changed = False
            for device, inst in sorted(claim.instances.items()):
                if inst.created and _present(inventory, inst):
                    continue
                others = {u: c for u, c in prepared().items() if u != claim.uid}
                owned = self.owned(others).get(inst.gpu_index, set())
                recorded = prepared().get(claim.uid)
                pending = recorded is not None and not recorded.instances.get(device, inst).created
                made = await self._make(inventory, device, claim, owned=owned, may_adopt=pending, record=record)
                claim = dataclasses.replace(
                    claim,
                    instances={**claim.instances, device: made},
                    uuids={**claim.uuids, device: made.uuid},
                )
                await record(claim)
                changed = True
            if changed:
                await self.ctx.gpu_state.refresh()  # INVENTORY_CHANGED: CDI spec, metrics, labels, slices follow
        await self._await_spec([i.uuid for i in claim.instances.values()])
        return claim

    async def _make(
        self,
        inventory: Inventory,
        device: str,
        claim: PreparedClaim,
        *,
        owned: set[int],
        may_adopt: bool,
        record: Record,
    ) -> MigInstance:
        inst = claim.instances[device]
        gpu = inventory.gpu(inst.gpu_index)
        table = partitions.table_of(gpu, inventory)
        if table is None or not gpu.mig_enabled:
            raise partitions.PlacementTaken(f"{device}: GPU {gpu.index} has no MIG mode enabled now")
        plan = partitions.creation(
            gpu, table, inst.profile, inst.start, owned=owned, device=device, may_adopt=may_adopt
        )
        if plan.adopt is not None:
            log.info("dra_mig_instance_adopted", device=device, gpu=gpu.index, gi=plan.adopt.gpu_instance_id)
            return dataclasses.replace(inst, gpu_instance_id=plan.adopt.gpu_instance_id, uuid=plan.adopt.uuid)
        pending = dataclasses.replace(inst, gpu_instance_id=None, uuid="")
        await record(dataclasses.replace(claim, instances={**claim.instances, device: pending}))
        mig = await self._control().create_gpu_instance(gpu.index, inst.profile, start=inst.start)
        self.created += 1
        log.info("dra_mig_instance_created", device=device, gpu=gpu.index, gi=mig.gpu_instance_id, uuid=mig.uuid)
        return dataclasses.replace(inst, gpu_instance_id=mig.gpu_instance_id, uuid=mig.uuid)

    async def _await_spec(self, uuids: list[str]) -> None:
        """Until the node's CDI spec names every one of ``uuids`` (the cdi subsystem follows the inventory)."""

        def missing() -> list[str]:
            return [u for u in uuids if not self.names_uuid(u)]

        if not await run_blocking(missing):
            return
        path = self.ctx.root.resolve(self.node_spec_path)
        watcher = self.ctx.backends.file_watcher([Path(path)], poll_s=min(self.ctx.settings.watch.poll_s, 0.5))
        stop = asyncio.Event()
        timeout = self.ctx.settings.dra.claim_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(watcher.changes(stop, initial=True)) as changes:
                    async for _ in changes:
                        if not await run_blocking(missing):
                            return
        except TimeoutError:
            gone = await run_blocking(missing)
            if not gone:
                return
            raise ConfigError(
                f"names no MIG device {', '.join(gone)} after {timeout:g} s (is the cdi subsystem running?)",
                source=self.node_spec_path,
            ) from None
        finally:
            stop.set()

    async def destroy(self, claim: PreparedClaim) -> str:
        """Destroy the claim's instances (those still there with the recorded UUID); '' or the error."""
        if not claim.instances:
            return ""
        async with self._lock:
            inventory = await self.ctx.gpu_state.refresh(raise_errors=True)
            assert inventory is not None
            errors = []
            for device, inst in sorted(claim.instances.items()):
                if not inst.created or not _present(inventory, inst):
                    continue
                assert inst.gpu_instance_id is not None
                try:
                    await self._control().destroy_gpu_instance(inst.gpu_index, inst.gpu_instance_id)
                except MigOperationError as err:
                    errors.append(f"{device}: {err}")
                    continue
                self.destroyed += 1
                log.info("dra_mig_instance_destroyed", device=device, gpu=inst.gpu_index, gi=inst.gpu_instance_id)
            await self.ctx.gpu_state.refresh()
        return "; ".join(errors)


def _present(inventory: Inventory, inst: MigInstance) -> bool:
    """Whether the recorded instance is on its GPU (same GPU instance, same UUID)."""
    try:
        gpu = inventory.gpu(inst.gpu_index)
    except KeyError:
        return False
    return any(m.gpu_instance_id == inst.gpu_instance_id and m.uuid == inst.uuid for m in gpu.mig_devices)
