"""MigControl over NVML, against the fake NVML surface extended with MIG changes that follow the H100's rules."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.nvml.mig import NvmlMigControl
from nodeagent.backends.gpu.protocols import MigControl, MigInUse, MigResetUnavailable
from nodeagent.backends.hostfs import Root
from nodeagent.backends.procs import Completed
from nodeagent.errors import CallTimeout, MigOperationError
from nodeagent.mig import service
from nodeagent.mig.config import parse_text
from tests.backends.fake_nvml import H100_PROFILES, FakeDevice, FakeMig, FakeNvml, error, h100_node

CI_SIZES = {1: (1,), 2: (1, 2), 3: (1, 2, 3), 4: (1, 2, 4), 7: (1, 2, 3, 4, 7)}
"""GPU-instance compute slices → compute-instance sizes (nvidia-smi mig -lcip on an H100)."""


class MigFakeNvml(FakeNvml):
    """The fake NVML plus MIG changes: modes pending until reset, explicit placements checked against the
    H100 table, compute instances, destroy, process lists."""

    def __init__(self, devices: list[FakeDevice]) -> None:
        super().__init__(devices)
        self.activation = pynvml.NVML_ERROR_IN_USE
        """What nvmlDeviceSetMigMode answers as activation status (IN_USE: a reset is needed)."""
        self.processes: dict[tuple[int, int | None], list[int]] = {}
        """(GPU index, GI or None) → pids."""
        self._uuids = itertools.count(1)
        self.placed_cis: list[tuple[int, int, int, int]] = []
        """(GI, CI profile id, start, size) of each compute instance made at an explicit placement."""
        self.threads: set[str] = set()

    def _note(self) -> None:
        self.threads.add(threading.current_thread().name)

    def nvmlDeviceSetMigMode(self, h: Any, mode: int) -> int:
        d = self._enter("nvmlDeviceSetMigMode", h)
        assert d is not None and d.mig_mode is not None
        self._note()
        if not mode and d.migs:
            raise error(pynvml.NVML_ERROR_IN_USE)
        d.mig_mode = (d.mig_mode[0], mode)
        return self.activation if d.mig_mode[0] != mode else pynvml.NVML_SUCCESS

    def reset(self, bus_id: str) -> None:
        d = next(d for d in self.devices if d.bus_id.upper() == bus_id)
        assert d.mig_mode is not None
        d.mig_mode = (d.mig_mode[1], d.mig_mode[1])
        d.migs = []

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, h: Any, profile_id: int, placement: Any) -> Any:
        d = self._enter("nvmlDeviceCreateGpuInstanceWithPlacement", h)
        assert d is not None
        self._note()
        if not d.mig_mode or not d.mig_mode[0]:
            raise error(pynvml.NVML_ERROR_INVALID_STATE)
        start, size = placement._obj.start, placement._obj.size
        row = next(r for r in H100_PROFILES if r[1] == profile_id)
        if (start, size) not in row[8]:
            raise error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if any(start < m.start + m.size and m.start < start + size for m in d.migs):
            raise error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gi = {8: 0, 4: 1, 2: 3, 1: 7}[size] + start // size
        slot = min(set(range(7)) - {m.slot for m in d.migs})
        m = FakeMig(
            d, slot, f"MIG-ffffffff-0000-0000-0000-{next(self._uuids):012d}", gi, 0, profile_id, start, size, row[4]
        )
        d.migs.append(m)
        d.migs.sort(key=lambda x: x.slot)
        return SimpleNamespace(mig=m)

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(self, gih: Any, profile: int, eng: int, version: int = 2) -> Any:
        self._enter("nvmlGpuInstanceGetComputeInstanceProfileInfo")
        row = next(r for r in H100_PROFILES if r[1] == gih.mig.profile_id)
        slices = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}.get(profile)
        if slices not in CI_SIZES[row[2]]:
            raise error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(id=100 + profile)

    def nvmlGpuInstanceCreateComputeInstanceWithPlacement(self, gih: Any, ci_profile_id: int, placement: Any) -> Any:
        """A compute instance at an explicit placement: the GPU instance's first one takes its MIG device,
        each further one is a MIG device of its own."""
        self._enter("nvmlGpuInstanceCreateComputeInstanceWithPlacement")
        self.placed_cis.append((gih.mig.gi, ci_profile_id, placement._obj.start, placement._obj.size))
        m = gih.mig
        row = next(r for r in H100_PROFILES if r[1] == m.profile_id)
        start, size = placement._obj.start, placement._obj.size
        if {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}[size] + 100 != ci_profile_id or start % {1: 1, 2: 2}.get(size, 4):
            raise error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if start + size > row[2]:
            raise error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        siblings = [x for x in m.parent.migs if x.gi == m.gi and x.ci_slices]
        if any(start < x.ci_start + x.ci_slices and x.ci_start < start + size for x in siblings):
            raise error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        if not siblings:
            m.ci_slices, m.ci_start = size, start
            return SimpleNamespace(mig=m)
        slot = min(set(range(7)) - {x.slot for x in m.parent.migs})
        uuid = f"MIG-ffffffff-0000-0000-0000-{next(self._uuids):012d}"
        ci = FakeMig(m.parent, slot, uuid, m.gi, len(siblings), m.profile_id, m.start, m.size, m.memory_mib)
        ci.ci_slices, ci.ci_start = size, start
        m.parent.migs.append(ci)
        m.parent.migs.sort(key=lambda x: x.slot)
        return SimpleNamespace(mig=ci)

    def nvmlGpuInstanceCreateComputeInstance(self, gih: Any, ci_profile_id: int) -> Any:
        self._enter("nvmlGpuInstanceCreateComputeInstance")
        return SimpleNamespace(mig=gih.mig)

    def nvmlGpuInstanceGetComputeInstances(self, gih: Any, ci_profile_id: int, array: Any, count_ref: Any) -> int:
        self._enter("nvmlGpuInstanceGetComputeInstances")
        count_ref._obj.value = 1
        return 0

    def nvmlComputeInstanceDestroy(self, ci: Any) -> int:
        self._enter("nvmlComputeInstanceDestroy")
        return 0

    def nvmlGpuInstanceDestroy(self, gih: Any) -> int:
        self._enter("nvmlGpuInstanceDestroy")
        self._note()
        m = gih.mig
        if self.processes.get((m.parent.index, m.gi)):
            raise error(pynvml.NVML_ERROR_IN_USE)
        m.parent.migs[:] = [x for x in m.parent.migs if x.gi != m.gi]
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        d = self._enter("nvmlDeviceGetComputeRunningProcesses", h)
        assert d is not None
        gi = h.gi if isinstance(h, FakeMig) else None
        return [SimpleNamespace(pid=p, usedGpuMemory=512 << 20) for p in self.processes.get((d.index, gi), [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: Any) -> list[Any]:
        self._enter("nvmlDeviceGetGraphicsRunningProcesses", h)
        return []

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        self._enter("nvmlSystemGetProcessName")
        return b"python3"


class FakeSmi:
    """``nvidia-smi --gpu-reset -i BUS``: resets the fake GPU, or answers like a GPU nvidia_drm holds."""

    def __init__(self, fake: MigFakeNvml) -> None:
        self.fake = fake
        self.argv: list[list[str]] = []
        self.in_use = False

    async def __call__(self, argv: list[str], *, timeout_s: float) -> Completed:
        self.argv.append(argv)
        if self.in_use:
            msg = b"GPU 00000000:19:00.0 is currently in use by another client.\n"
            return Completed(tuple(argv), 255, b"", msg)
        self.fake.reset(argv[-1])
        return Completed(tuple(argv), 0, b"GPU reset successfully.\n", b"")


@pytest.fixture
async def nvml() -> AsyncIterator[tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi]]:
    devs = h100_node(2, mig_on=(1,))
    fake = MigFakeNvml(devs)
    backend = NvmlBackend(nvml=fake, call_timeout_s=1.0)  # type: ignore[arg-type]
    await backend.open()
    smi = FakeSmi(fake)
    control = NvmlMigControl(backend, timeout_s=0.5, run=smi)
    yield backend, fake, control, smi
    for d in devs:
        d.release.set()
    await backend.close()


async def test_mode_change_reset_create_destroy(nvml: tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi]) -> None:
    backend, fake, control, smi = nvml
    assert isinstance(control, MigControl)
    assert await control.set_mig_mode(0, True) is True
    g = (await backend.inventory()).gpu(0)
    assert (g.mig_enabled, g.mig_pending) == (False, True)
    await control.reset_gpu(0)
    assert smi.argv == [["nvidia-smi", "--gpu-reset", "-i", g.pci_bus_id]]
    assert (await backend.inventory()).gpu(0).mig_enabled
    made = await control.create_gpu_instance(0, "3g.40gb", start=4)
    assert (made.profile, made.placement_start, made.gpu_instance_id) == ("3g.40gb", 4, 2)
    with pytest.raises(MigOperationError, match="insufficient resources"):
        await control.create_gpu_instance(0, "2g.20gb", start=4)  # overlaps the 3g.40gb
    await control.destroy_gpu_instance(0, 2)
    assert (await backend.inventory()).gpu(0).mig_devices == ()
    assert fake.threads and all(t.startswith("nvml") for t in fake.threads), fake.threads


async def test_compute_instances_at_explicit_placements(
    nvml: tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi],
) -> None:
    """Issue 23 item 1: a GPU instance with compute instances smaller than itself, as the planner asks."""
    backend, fake, control, _ = nvml
    await control.destroy_gpu_instance(1, 1)  # GPU 1 comes with MIG on and two 3g.40gb (GI 1 and 2)
    await control.destroy_gpu_instance(1, 2)
    first = await control.create_gpu_instance(1, "7g.80gb", start=0, compute=((4, 0), (3, 4)))
    assert (first.profile, first.compute_start, first.compute_instance_id) == ("4c.7g.80gb", 0, 0)
    assert fake.placed_cis == [(0, 103, 0, 4), (0, 102, 4, 3)]
    devices = (await backend.inventory()).gpu(1).mig_devices
    assert [(d.gpu_instance_id, d.compute_instance_id, d.profile, d.compute_start) for d in devices] == [
        (0, 0, "4c.7g.80gb", 0),
        (0, 1, "3c.7g.80gb", 4),
    ]
    await control.destroy_gpu_instance(1, 0)
    with pytest.raises(MigOperationError, match=r"Invalid Argument"):
        await control.create_gpu_instance(1, "3g.40gb", start=0, compute=((2, 1),))
    assert (await backend.inventory()).gpu(1).mig_devices == ()  # no half-made GPU instance left behind


async def test_reset_required_means_reboot_and_in_use_is_named(
    nvml: tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi],
) -> None:
    _, fake, control, smi = nvml
    fake.activation = pynvml.NVML_ERROR_RESET_REQUIRED
    assert await control.set_mig_mode(0, True) is True
    with pytest.raises(MigResetUnavailable, match="RESET_REQUIRED"):
        await control.reset_gpu(0)
    assert smi.argv == []
    fake.processes[(1, 1)] = [777]
    with pytest.raises(MigInUse, match="NVML_ERROR_IN_USE"):
        await control.destroy_gpu_instance(1, 1)
    smi.in_use = True
    with pytest.raises(MigInUse, match="in use by another client"):
        await control.reset_gpu(1)


async def test_processes_per_instance(nvml: tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi]) -> None:
    _, fake, control, _ = nvml
    fake.processes[(1, 2)] = [4242]
    procs = await control.gpu_processes(1)
    assert [(p.pid, p.name, p.gpu_instance_id, p.used_memory_mib) for p in procs] == [(4242, "python3", 2, 512)]


async def test_a_hung_mig_call_times_out_without_blocking(
    nvml: tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi],
) -> None:
    _, fake, control, _ = nvml
    fake.devices[0].hang_on = "nvmlDeviceSetMigMode"
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        await control.set_mig_mode(0, True)
    assert time.monotonic() - started < 2.0


async def test_apply_through_nvml_keeps_the_untouched_instances(
    nvml: tuple[NvmlBackend, MigFakeNvml, NvmlMigControl, FakeSmi], tmp_path: Path
) -> None:
    backend, fake, control, _ = nvml
    text = (
        "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
        '      mig-devices: {"3g.40gb": 1, "2g.20gb": 2}\n'
    )
    config = parse_text(text, source="c.yaml").select("c")
    before = (await backend.inventory()).gpu(1).mig_devices
    out = await service.apply_config(config, control, root=Root(tmp_path), inventory=await backend.inventory())
    assert out.ok, out.reasons()
    inv = await backend.inventory()
    assert sorted((d.profile, d.placement_start) for d in inv.gpu(0).mig_devices) == [
        ("2g.20gb", 0),
        ("2g.20gb", 2),
        ("3g.40gb", 4),
    ]
    after = {d.uuid for d in inv.gpu(1).mig_devices}
    kept = [d for d in before if d.placement_start == 4]
    assert kept[0].uuid in after  # the 3g.40gb at 4 stayed; the one at 0 made room for the two 2g.20gb
    assert fake.calls_for("nvmlGpuInstanceDestroy") == 1
