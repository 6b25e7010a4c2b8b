"""GPU holders: NVML process lists, /proc/*/fd on /dev/nvidia*, pods from the kubelet's pod resources."""

from __future__ import annotations

from pathlib import Path

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import ContainerDevices
from nodeagent.errors import BackendUnavailable
from nodeagent.mig.holders import Holder, blocking, find_holders
from nodeagent.model.mig import GpuProcess


class Pods:
    def __init__(self, items: tuple[ContainerDevices, ...] = (), fail: bool = False) -> None:
        self.items, self.fail = items, fail

    async def list(self) -> tuple[ContainerDevices, ...]:
        if self.fail:
            raise BackendUnavailable("no kubelet socket")
        return self.items


async def test_holders_from_every_source(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 3, 0, mig_layout="3g.40gb,3g.40gb")
    inv = await sim.inventory()
    g0, g1, g2 = inv.gpus
    mig = g1.mig_devices[1]
    sim.set_holders(1, [GpuProcess(100, "train", 1, mig.gpu_instance_id, 2048)])
    fd = tmp_path / "proc/200/fd"
    fd.mkdir(parents=True)
    (fd / "5").symlink_to(f"/dev/nvidia{g2.minor_number}")
    (fd / "6").symlink_to("/dev/nvidiactl")
    (tmp_path / "proc/200/comm").write_text("jupyter\n")
    own = tmp_path / "proc/300/fd"
    own.mkdir(parents=True)
    (own / "1").symlink_to(f"/dev/nvidia{g0.minor_number}")
    pods = Pods(
        (
            ContainerDevices("ml", "trainer-0", "main", "nvidia.com/mig-3g.40gb", (mig.uuid,)),
            ContainerDevices("ml", "notebook", "nb", "nvidia.com/gpu", (g2.uuid,)),
        )
    )
    found = await find_holders(inv.gpus, root=Root(tmp_path), processes=sim, pods=pods, own_pid=300)
    assert sorted(found) == [1, 2]
    assert [h.describe() for h in found[1]] == [
        f"pid 100 (train) in ml/trainer-0 (main) on GI {mig.gpu_instance_id} [nvml]",
        f"ml/trainer-0 (main) on GI {mig.gpu_instance_id} [kubelet]",
    ]
    assert found[2][0] == Holder(2, f"/dev/nvidia{g2.minor_number}", 200, "jupyter", None, "ml/notebook (nb)")
    # Without a kubelet the processes are still found.
    found = await find_holders(inv.gpus, root=Root(tmp_path), processes=sim, pods=Pods(fail=True), own_pid=300)
    assert [h.pod for h in found[2]] == [""]
    # Which holders a change hurts: a mode change all of them; a destroy those on the destroyed instance.
    other = mig.gpu_instance_id ^ 3
    assert blocking(found, 1, mode_change=False, destroyed=[other]) == []
    assert len(blocking(found, 1, mode_change=False, destroyed=[mig.gpu_instance_id])) == 1
    assert len(blocking(found, 1, mode_change=True, destroyed=[])) == 1
    await sim.close()
