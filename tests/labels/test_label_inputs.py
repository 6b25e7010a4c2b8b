"""From the agent's inventory (the simulator's H100s) to GFD labels."""

from __future__ import annotations

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.labels import inputs
from nodeagent.labels.facts import MigStrategy, Sharing
from nodeagent.labels.labelers import compute


async def _labels(layout: str, strategy: MigStrategy) -> dict[str, str]:
    backend = SimGpuBackend("h100-80gb-hbm3", count=2, mig_layout=layout)
    try:
        inventory = await backend.inventory()
    finally:
        await backend.close()
    facts = inputs.node_facts(
        inventory,
        pci_classes={0: 0x030200, 1: 0x030200},
        machine_type="DGX H100",
        mig_strategy=strategy,
        sharing=Sharing(),
        timestamp=None,
    )
    return dict(compute(facts).labels)


async def test_full_gpus_from_the_simulator() -> None:
    labels = await _labels("", MigStrategy.NONE)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.mode"] == "compute"
    assert labels["nvidia.com/mig.capable"] == "true"
    assert labels["nvidia.com/cuda.driver-version.full"] == "580.159.04"
    assert "nvidia.com/mig.strategy" not in labels


async def test_mig_attributes_come_from_the_model_table() -> None:
    labels = await _labels("3g.40gb*2", MigStrategy.MIXED)
    assert labels["nvidia.com/mig-3g.40gb.count"] == "4"
    assert labels["nvidia.com/mig-3g.40gb.multiprocessors"] == "60"
    assert labels["nvidia.com/mig-3g.40gb.slices.gi"] == "3"
    assert labels["nvidia.com/mig-3g.40gb.slices.ci"] == "3"
    assert int(labels["nvidia.com/mig-3g.40gb.memory"]) > 40000
    single = await _labels("3g.40gb*2", MigStrategy.SINGLE)
    assert single["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"
    assert single["nvidia.com/gpu.engines.copy"] == labels["nvidia.com/mig-3g.40gb.engines.copy"]
