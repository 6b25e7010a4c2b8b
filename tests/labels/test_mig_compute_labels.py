"""GFD labels for compute-instance MIG devices (issue 23 item 1): GFD names a MIG device by go-nvlib's profile
string (``1c.3g.40gb`` when the compute instance is smaller than its GPU instance) and takes ``slices.gi``,
``slices.ci``, ``multiprocessors`` and the shared engines from NVML's device attributes."""

from __future__ import annotations

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.labels import inputs
from nodeagent.labels.facts import MigStrategy, Sharing
from nodeagent.labels.labelers import compute


async def _labels(strategy: MigStrategy) -> dict[str, str]:
    sim = SimGpuBackend("h100-80gb-hbm3", count=1)
    await sim.open()
    try:
        await sim.set_mig_mode(0, True)
        await sim.reset_gpu(0)
        await sim.create_gpu_instance(0, "3g.40gb", start=0, compute=((2, 0), (1, 2)))
        await sim.create_gpu_instance(0, "3g.40gb", start=4)
        inventory = await sim.inventory()
    finally:
        await sim.close()
    facts = inputs.node_facts(
        inventory,
        pci_classes={0: 0x030200},
        machine_type=None,
        mig_strategy=strategy,
        sharing=Sharing(),
        timestamp=None,
    )
    return dict(compute(facts).labels)


async def test_compute_instances_are_labelled_by_their_own_profile() -> None:
    labels = await _labels(MigStrategy.MIXED)
    assert labels["nvidia.com/mig-2c.3g.40gb.count"] == "1"
    assert labels["nvidia.com/mig-1c.3g.40gb.count"] == "1"
    assert labels["nvidia.com/mig-3g.40gb.count"] == "1"
    assert labels["nvidia.com/mig-2c.3g.40gb.slices.gi"] == "3"
    assert labels["nvidia.com/mig-2c.3g.40gb.slices.ci"] == "2"
    assert labels["nvidia.com/mig-1c.3g.40gb.slices.ci"] == "1"
    assert labels["nvidia.com/mig-3g.40gb.slices.ci"] == "3"
    assert labels["nvidia.com/mig-2c.3g.40gb.multiprocessors"] == "32"  # a 2-slice compute instance: 2g's SMs
    assert labels["nvidia.com/mig-1c.3g.40gb.multiprocessors"] == "16"
    assert labels["nvidia.com/mig-3g.40gb.multiprocessors"] == "60"
    assert labels["nvidia.com/mig-2c.3g.40gb.engines.copy"] == labels["nvidia.com/mig-3g.40gb.engines.copy"]
    # Three MIG device types: the single strategy calls that invalid, as GFD does.
    single = await _labels(MigStrategy.SINGLE)
    assert single["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-INVALID"
