"""Compute-instance profiles end to end (issue 23 item 1): the simulator's MIG control makes compute instances
inside a GPU instance by the compute-instance placement rules, keeps them across commands, and
``nodeagent mig apply|assert|export`` round-trips a layout in the ``Nc.Mg.Kgb`` form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.errors import ConfigError, MigOperationError
from tests.mig.test_commands import run, state_of


async def test_the_simulator_makes_compute_instances_inside_a_gpu_instance(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 3)
    sim.use_state_file(tmp_path / "state.json")
    await sim.open()
    await sim.set_mig_mode(0, True)
    await sim.reset_gpu(0)
    first = await sim.create_gpu_instance(0, "7g.80gb", start=0, compute=((4, 0), (3, 4)))
    assert (first.profile, first.compute_instance_id, first.compute_start) == ("4c.7g.80gb", 0, 0)
    devices = (await sim.inventory()).gpu(0).mig_devices
    assert [(d.mig_index, d.gpu_instance_id, d.compute_instance_id, d.profile, d.compute_start) for d in devices] == [
        (0, 0, 0, "4c.7g.80gb", 0),
        (1, 0, 1, "3c.7g.80gb", 4),
    ]
    assert len({d.uuid for d in devices}) == 2
    await sim.destroy_gpu_instance(0, 0)
    with pytest.raises(MigOperationError, match=r"a 3c compute instance cannot start at compute slice 2 of a 7g\.80gb"):
        await sim.create_gpu_instance(0, "7g.80gb", compute=((3, 2),))
    with pytest.raises(MigOperationError, match=r"the 2c compute instance at 0 overlaps another in the 3g\.40gb"):
        await sim.create_gpu_instance(0, "3g.40gb", compute=((1, 0), (2, 0)))
    with pytest.raises(MigOperationError, match=r"a 4g\.40gb GPU instance has no 3-slice compute instance"):
        await sim.create_gpu_instance(0, "4g.40gb", compute=((3, 0),))
    assert not (await sim.inventory()).gpu(0).mig_devices  # a refused layout leaves no GPU instance behind
    made = await sim.create_gpu_instance(0, "3g.40gb", start=4, compute=((2, 0), (1, 2)))
    await sim.close()
    again = SimGpuBackend("h100-80gb-hbm3", 1, 3)
    again.use_state_file(tmp_path / "state.json")
    await again.open()
    kept = (await again.inventory()).gpu(0).mig_devices
    assert [(d.profile, d.compute_start, d.placement_start) for d in kept] == [
        ("2c.3g.40gb", 0, 4),
        ("1c.3g.40gb", 2, 4),
    ]
    assert kept[0].uuid == made.uuid
    await again.close()


CONFIG = (
    "version: v1\nmig-configs:\n"
    "  ci:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n"
    '        "3c.7g.80gb": 1\n        "4c.7g.80gb": 1\n'
    "  split:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n"
    '        "1c.3g.40gb": 4\n        "2c.3g.40gb": 1\n        "1g.10gb": 1\n'
    "  whole:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n"
    '        "7c.7g.80gb": 1\n'
)


def test_apply_assert_export_with_compute_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    f = tmp_path / "ci.yaml"
    f.write_text(CONFIG)
    sim = "h100-80gb-hbm3:2"
    code, out, err = run(capsys, root, "apply", "-f", str(f), "-c", "ci", sim=sim)
    assert code == 0, out + err
    assert "create 7g.80gb at 0:8 with compute instances 4c at 0, 3c at 4" in out
    assert run(capsys, root, "assert", "-f", str(f), "-c", "ci", sim=sim)[0] == 0
    code, exported, _ = run(capsys, root, "export", sim=sim)
    assert code == 0
    assert exported == (
        "version: v1\nmig-configs:\n  current:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n"
        '        "3c.7g.80gb": 1\n        "4c.7g.80gb": 1\n'
    )
    before = json.loads(state_of(root))
    code, out, _ = run(capsys, root, "apply", "-f", str(f), "-c", "ci", sim=sim)
    assert code == 0 and "step(s) done" not in out and out.count("already as configured") == 2
    assert json.loads(state_of(root)) == before
    # Two 3g.40gb: one with 3x1c, one with 2c + 1c; and a 1g.10gb is too much beside them (8 memory slices).
    code, out, err = run(capsys, root, "apply", "-f", str(f), "-c", "split", sim=sim)
    assert code != 0
    assert "(the compute instances need 2x3g.40gb + 1g.10gb): needs 9 memory slices; the GPU has 8" in out + err
    assert json.loads(state_of(root)) == before  # a refused plan changes nothing
    code, out, err = run(capsys, root, "apply", "-f", str(f), "-c", "whole", sim=sim)
    assert code == 0, out + err
    code, exported, _ = run(capsys, root, "export", sim=sim)
    assert '        "7g.80gb": 1\n' in exported
    assert run(capsys, root, "assert", "-f", str(f), "-c", "whole", sim=sim)[0] == 0


async def test_the_simulators_start_layout_takes_compute_instance_profiles() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1, mig_layout="1c.3g.40gb*3,3g.40gb")
    try:
        devices = (await sim.inventory()).gpu(0).mig_devices
        assert sorted((d.gpu_instance_id, d.profile, d.compute_start) for d in devices) == [
            (1, "3g.40gb", 0),
            (2, "1c.3g.40gb", 0),
            (2, "1c.3g.40gb", 1),
            (2, "1c.3g.40gb", 2),
        ]
    finally:
        await sim.close()
    with pytest.raises(ConfigError, match=r"a 4g\.40gb GPU instance has no 3-slice compute instance"):
        SimGpuBackend("h100-80gb-hbm3", 1, mig_layout="3c.4g.40gb")
    with pytest.raises(ConfigError, match=r"3g\.40gb\*3: NVIDIA H100 80GB HBM3 allows at most 2"):
        SimGpuBackend("h100-80gb-hbm3", 1, mig_layout="2c.3g.40gb*3")
