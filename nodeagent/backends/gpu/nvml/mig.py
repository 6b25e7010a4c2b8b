"""MigControl over NVML: MIG mode, GPU instances at explicit placements, their compute instances, destroy,
process lists. Every NVML call runs on the backend's one worker thread, each with the MIG call timeout.

- ``nvmlDeviceSetMigMode`` answers an activation status: success (the mode is current already), or a code
  saying a reset is needed; ``NVML_ERROR_RESET_REQUIRED`` there means the GPU cannot be reset from here
  (passthrough VMs and the like), so ``reset_gpu`` then raises ``MigResetUnavailable`` (reboot).
- NVML has no public GPU reset; like mig-parted, the reset runs ``nvidia-smi --gpu-reset -i <bus id>``
  (asynchronously, with a timeout); "In use by another client" becomes ``MigInUse``.
- A GPU instance is created with ``nvmlDeviceCreateGpuInstanceWithPlacement`` (explicit start), then one
  compute instance spanning it (the compute-instance profile with the GI's slice count, shared engines),
  or, for compute-instance profiles (``1c.3g.40gb``), each compute instance the plan asks for with
  ``nvmlGpuInstanceCreateComputeInstanceWithPlacement`` (its slice count's profile at its start).
- Destroy: every compute instance of the GPU instance, then the GPU instance.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from nodeagent.backends import procs
from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.protocols import MigInUse, MigResetUnavailable
from nodeagent.backends.gpu.sweep import Hop
from nodeagent.errors import BackendUnavailable, CallTimeout, MigOperationError
from nodeagent.model.gpu import MigDevice, MigProfile
from nodeagent.model.mig import GpuProcess
from nodeagent.model.mig_compute import ComputePlacement

T = TypeVar("T")

CI_PROFILE_FOR_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
"""GI slice count → NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE index (the CI that spans the whole GI)."""


class NvmlMigControl:
    """MigControl for an opened NvmlBackend."""

    def __init__(
        self,
        backend: NvmlBackend,
        *,
        timeout_s: float = 60.0,
        nvidia_smi: str = "nvidia-smi",
        run: Callable[..., Any] = procs.run,
    ) -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self.nvidia_smi = nvidia_smi
        self._run = run
        self._reboot_only: set[int] = set()

    @property
    def nv(self) -> Any:
        return self.backend.nv

    async def _call(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """One blocking function on the NVML worker thread, with the MIG timeout; NVML errors translated."""
        hop = Hop()

        def run() -> T:
            try:
                return hop.call(name, fn, *args)
            except self.backend.nvml_error as err:
                raise self._translate(name, err) from None

        worker = self.backend._sweeper.worker
        return await worker.call_watched(run, hop=hop, call_timeout_s=self.timeout_s, name=name)

    def _translate(self, name: str, err: Any) -> MigOperationError:
        nv = self.nv
        code = getattr(err, "value", None)
        if code == nv.NVML_ERROR_IN_USE:
            return MigInUse(f"{name}: in use by another client (NVML_ERROR_IN_USE)")
        if code == nv.NVML_ERROR_RESET_REQUIRED:
            return MigResetUnavailable(f"{name}: a reset is required and not possible here (NVML_ERROR_RESET_REQUIRED)")
        if code == nv.NVML_ERROR_INSUFFICIENT_RESOURCES:
            return MigOperationError(f"{name}: insufficient resources (the placement is taken)")
        if code == nv.NVML_ERROR_NO_PERMISSION:
            return MigOperationError(f"{name}: no permission (MIG changes need root)")
        return MigOperationError(f"{name}: {err}")

    # ---- MigControl

    async def set_mig_mode(self, gpu_index: int, enabled: bool) -> bool:
        nv = self.nv
        h = self.backend.handle(gpu_index)
        mode = nv.NVML_DEVICE_MIG_ENABLE if enabled else nv.NVML_DEVICE_MIG_DISABLE
        status = await self._call("nvmlDeviceSetMigMode", nv.nvmlDeviceSetMigMode, h, mode)
        if status == nv.NVML_ERROR_RESET_REQUIRED:
            self._reboot_only.add(gpu_index)
        current, _pending = await self._call("nvmlDeviceGetMigMode", nv.nvmlDeviceGetMigMode, h)
        return bool(current != mode)

    async def reset_gpu(self, gpu_index: int) -> None:
        if gpu_index in self._reboot_only:
            raise MigResetUnavailable(
                f"GPU {gpu_index}: the driver reported NVML_ERROR_RESET_REQUIRED for the MIG mode change: "
                "this GPU cannot be reset here"
            )
        inventory = await self.backend.inventory()
        bus_id = inventory.gpu(gpu_index).pci_bus_id
        try:
            done = await self._run([self.nvidia_smi, "--gpu-reset", "-i", bus_id], timeout_s=self.timeout_s)
        except (BackendUnavailable, CallTimeout) as err:
            raise MigOperationError(f"GPU {gpu_index}: reset failed: {err}") from err
        if done.ok:
            return
        text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
        if "in use by another client" in text.lower():
            raise MigInUse(f"GPU {gpu_index}: reset refused: in use by another client")
        if "not supported" in text.lower():
            raise MigResetUnavailable(f"GPU {gpu_index}: reset not supported here: {done.describe_failure()}")
        raise MigOperationError(f"GPU {gpu_index}: reset failed: {done.describe_failure()}")

    async def create_gpu_instance(
        self, gpu_index: int, profile: str, *, start: int | None = None, compute: Sequence[ComputePlacement] = ()
    ) -> MigDevice:
        nv = self.nv
        inventory = await self.backend.inventory()
        gpu = inventory.gpu(gpu_index)
        mp = _profile(inventory.mig_profiles.get(gpu.name, ()), profile, gpu.name)
        h = self.backend.handle(gpu_index)

        def create() -> int:
            if start is None:
                gi = nv.nvmlDeviceCreateGpuInstance(h, mp.profile_id)
            else:
                placement = nv.c_nvmlGpuInstancePlacement_t()
                placement.start, placement.size = start, mp.slices
                gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(h, mp.profile_id, ctypes.byref(placement))
            made: list[Any] = []
            try:
                if not compute:
                    info = _ci_profile_info(nv, gi, mp.compute_slices)
                    made.append(nv.nvmlGpuInstanceCreateComputeInstance(gi, info.id))
                for slices, ci_start in compute:
                    info = _ci_profile_info(nv, gi, slices)
                    where = nv.c_nvmlComputeInstancePlacement_t()
                    where.start, where.size = ci_start, slices
                    made.append(nv.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi, info.id, ctypes.byref(where)))
            except BaseException:
                for ci in made:  # no half-made instance left behind
                    nv.nvmlComputeInstanceDestroy(ci)
                nv.nvmlGpuInstanceDestroy(gi)
                raise
            return int(nv.nvmlGpuInstanceGetInfo(gi).id)

        gi_id = await self._call("nvmlDeviceCreateGpuInstanceWithPlacement", create)
        after = await self.backend.inventory()
        for d in after.gpu(gpu_index).mig_devices:
            if d.gpu_instance_id == gi_id:
                return d
        raise MigOperationError(f"GPU {gpu_index}: GPU instance {gi_id} was created but NVML does not list it")

    async def destroy_gpu_instance(self, gpu_index: int, gpu_instance_id: int) -> None:
        nv = self.nv
        h = self.backend.handle(gpu_index)

        def destroy() -> None:
            gi = nv.nvmlDeviceGetGpuInstanceById(h, gpu_instance_id)
            for ci in _compute_instances(nv, gi):
                nv.nvmlComputeInstanceDestroy(ci)
            nv.nvmlGpuInstanceDestroy(gi)

        await self._call("nvmlGpuInstanceDestroy", destroy)

    async def gpu_processes(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        nv = self.nv
        h = self.backend.handle(gpu_index)
        error = self.backend.nvml_error

        def listed() -> tuple[GpuProcess, ...]:
            handles: list[tuple[Any, int | None]] = [(h, None)]
            for i in range(int(nv.nvmlDeviceGetMaxMigDeviceCount(h) or 0)):
                try:
                    mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
                except error:
                    continue
                handles.append((mh, int(nv.nvmlDeviceGetGpuInstanceId(mh))))
            out: dict[tuple[int, int | None], GpuProcess] = {}
            for handle, gi in handles:
                for fn in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
                    try:
                        procs_ = fn(handle)
                    except error:
                        continue
                    for p in procs_:
                        pid = int(p.pid)
                        gi_id = gi if gi is not None else _gi_of(p)
                        try:
                            name = nv.nvmlSystemGetProcessName(pid)
                        except error:
                            name = ""
                        name = name.decode() if isinstance(name, bytes) else str(name)
                        mib = int(getattr(p, "usedGpuMemory", 0) or 0) // (1024 * 1024)
                        out.setdefault((pid, gi_id), GpuProcess(pid, name, gpu_index, gi_id, mib))
            return tuple(out.values())

        return await self._call("nvmlDeviceGetComputeRunningProcesses", listed)


def _gi_of(process: Any) -> int | None:
    gi = getattr(process, "gpuInstanceId", None)
    return None if gi is None or gi == 0xFFFFFFFF else int(gi)


def _ci_profile_info(nv: Any, gi: Any, slices: int) -> Any:
    """The compute-instance profile of ``slices`` compute slices (shared engines) in a GPU instance."""
    if slices not in CI_PROFILE_FOR_SLICES:
        raise MigOperationError(f"no {slices}-slice compute-instance profile in NVML")
    return nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi, CI_PROFILE_FOR_SLICES[slices], nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    )


def _compute_instances(nv: Any, gi: Any) -> list[Any]:
    """Every compute instance of a GPU instance, over all compute-instance profiles."""
    found: list[Any] = []
    for profile in sorted(set(CI_PROFILE_FOR_SLICES.values())):
        try:
            info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, profile, nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
            array = (nv.c_nvmlComputeInstance_t * 8)()
            count = ctypes.c_uint(0)
            nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, array, ctypes.byref(count))
            found.extend(array[i] for i in range(min(count.value, 8)))
        except nv.NVMLError:
            continue
    return found


def _profile(profiles: tuple[MigProfile, ...], name: str, gpu_name: str) -> MigProfile:
    for p in profiles:
        if p.name == name:
            return p
    valid = ", ".join(p.name for p in profiles) or "none"
    raise MigOperationError(f"{gpu_name} has no MIG profile {name!r} (valid: {valid})")
