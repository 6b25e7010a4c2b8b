"""CDI names on a GPU instance split into compute instances (issue 23 item 1): as nvidia-ctk names MIG
devices, each compute instance is a MIG device of its own (``<gpu>:<mig index>`` and ``MIG-<uuid>``) with
its GPU instance's and its own compute instance's capability nodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nodeagent.backends.chardevs import mig_cap_minor
from nodeagent.backends.sim import sandbox
from nodeagent.cdi import spec as cdispec
from nodeagent.model.gpu import Inventory, MigDevice
from tests.cdi.test_spec import _hook_binary, _spec_for, _validate
from tests.driver.fakes import make_ctx, real_usr_local_nvidia


def _split(inv: Inventory) -> Inventory:
    """GPU 1 with one 7g GPU instance holding a 4c and a 3c compute instance."""
    gpu = inv.gpus[1]
    devices = tuple(
        MigDevice(f"MIG-{n}000000-0000-0000-0000-000000000000", 1, n, 0, n, name, 0, 8, 81152, compute_start=cs)
        for n, (name, cs) in enumerate((("4c.7g.80gb", 0), ("3c.7g.80gb", 4)))
    )
    return dataclasses.replace(inv, gpus=(inv.gpus[0], dataclasses.replace(gpu, mig_devices=devices)))


async def test_each_compute_instance_is_a_cdi_device_with_its_own_capability(tmp_path: Path) -> None:
    inv = _split(sandbox.sandbox_inventory(2, mig_on=(1,)))
    root = real_usr_local_nvidia(tmp_path)
    sandbox.write_kernel_state(root, inv)
    sandbox.write_device_placeholders(root, inv)
    _hook_binary(root)
    spec = await _spec_for(make_ctx(tmp_path, inv))
    _validate(spec)
    names = [d["name"] for d in spec["devices"]]
    migs = inv.gpus[1].mig_devices
    assert names[4:] == ["1:0", migs[0].uuid, "1:1", migs[1].uuid, "all"]
    minor = inv.gpus[1].minor_number
    gi, ci0, ci1 = mig_cap_minor(minor, 0), mig_cap_minor(minor, 0, 0), mig_cap_minor(minor, 0, 1)
    nodes = {d["name"]: [n["path"] for n in d["containerEdits"]["deviceNodes"]] for d in spec["devices"]}
    assert nodes["1:1"] == ["/dev/nvidia1", f"/dev/nvidia-caps/nvidia-cap{gi}", f"/dev/nvidia-caps/nvidia-cap{ci1}"]
    assert nodes[migs[0].uuid][-1] == f"/dev/nvidia-caps/nvidia-cap{ci0}"
    paths = cdispec.device_node_paths(inv)
    assert len(paths) == len(set(paths)), "the GPU instance's node is named once"
