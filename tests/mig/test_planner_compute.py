"""The planner with compute-instance profiles (issue 23 item 1): compute instances of one GPU-instance profile
share the fewest GPU instances, placed by the compute-instance rules inside them; GPU instances are placed as
before; impossible layouts are refused with the reason."""

from __future__ import annotations

from nodeagent.mig.config import MigConfig, MigEntry
from nodeagent.mig.planner import Action, GpuMigLayout, Instance, applied, instances_of, plan_gpu
from nodeagent.model.gpu import MigDevice
from tests.mig.support import identity, state


def entry(devices: dict[str, int]) -> MigEntry:
    return MigEntry("c", 0, None, (), True, tuple(devices.items()))


def test_two_compute_instances_share_one_gpu_instance() -> None:
    plan = plan_gpu(state(), entry({"3c.7g.80gb": 1, "4c.7g.80gb": 1}))
    assert not plan.error
    (step,) = plan.steps
    assert (step.action, step.profile, step.start, step.compute) == (Action.CREATE, "7g.80gb", 0, ((4, 0), (3, 4)))
    assert step.summary == "GPU 0: create 7g.80gb at 0:8 with compute instances 4c at 0, 3c at 4"


def test_compute_instances_fill_the_fewest_gpu_instances() -> None:
    plan = plan_gpu(state(), entry({"1c.3g.40gb": 6}))
    assert [(s.profile, s.start, s.compute) for s in plan.steps] == [
        ("3g.40gb", 0, ((1, 0), (1, 1), (1, 2))),
        ("3g.40gb", 4, ((1, 0), (1, 1), (1, 2))),
    ]
    plan = plan_gpu(state(), entry({"2c.3g.40gb": 2, "1c.3g.40gb": 2}))
    assert not plan.error
    assert sorted((s.profile, s.compute) for s in plan.steps) == [
        ("3g.40gb", ((2, 0), (1, 2))),
        ("3g.40gb", ((2, 0), (1, 2))),
    ]


def test_media_extension_forms_belong_to_the_gpu_instance() -> None:
    plan = plan_gpu(state(), entry({"1c.1g.10gb+me": 1, "1c.2g.20gb": 2}))
    assert not plan.error
    assert sorted((s.profile, s.compute) for s in plan.steps) == [("1g.10gb+me", ()), ("2g.20gb", ((1, 0), (1, 1)))]


def test_impossible_layouts_are_refused_with_the_reason() -> None:
    plan = plan_gpu(state(), entry({"1c.7g.80gb": 1, "7g.80gb": 1}))
    assert plan.error == (
        "1x1c.7g.80gb, 1x7g.80gb does not fit on a NVIDIA H100 80GB HBM3 (the compute instances need 2x7g.80gb): "
        "2x 7g.80gb: at most 1 instance(s) per GPU"
    )
    plan = plan_gpu(state(), entry({"3c.4g.40gb": 1}))
    assert (
        plan.error
        == "NVIDIA H100 80GB HBM3: a 4g.40gb GPU instance has no 3-slice compute instance (it has 1c, 2c, 4c)"
    )
    plan = plan_gpu(state(), entry({"2c.3g.40gb": 3}))  # one 2c place per 3g GPU instance: three 3g.40gb
    assert "the compute instances need 3x3g.40gb" in plan.error


def _devices(gi: int, profile_names: list[tuple[str, int]], start: int, size: int) -> list[MigDevice]:
    return [
        MigDevice(f"MIG-{gi}-{ci}", 0, 0, gi, ci, name, start, size, 40000, compute_start=cs)
        for ci, (name, cs) in enumerate(profile_names)
    ]


def test_the_layout_in_place_is_kept_and_asserted() -> None:
    devices = _devices(0, [("4c.7g.80gb", 0), ("3c.7g.80gb", 4)], 0, 8)
    instances = instances_of(devices)
    assert instances == (Instance(0, "7g.80gb", 0, "MIG-0-0", ((4, 0), (3, 4))),)
    layout = GpuMigLayout(identity(), True, True, instances)
    assert layout.counts() == {"4c.7g.80gb": 1, "3c.7g.80gb": 1}
    target = entry({"3c.7g.80gb": 1, "4c.7g.80gb": 1})
    plan = plan_gpu(layout, target)
    assert not plan.steps and plan.kept == instances
    config = MigConfig("f", "c", (target,))
    assert applied(config, [layout]) == (True, [])
    # 7c.7g.80gb is 7g.80gb (go-nvlib's canonical name): a spanning compute instance.
    spanning = GpuMigLayout(identity(), True, True, instances_of(_devices(0, [("7g.80gb", 0)], 0, 8)))
    assert applied(MigConfig("f", "c", (entry({"7c.7g.80gb": 1}),)), [spanning]) == (True, [])
    ok, diff = applied(MigConfig("f", "c", (entry({"1c.7g.80gb": 2}),)), [layout])
    assert not ok and diff == ["GPU 0: has 1x3c.7g.80gb, 1x4c.7g.80gb; the config wants 2x1c.7g.80gb"]


def test_other_compute_instances_rebuild_only_that_gpu_instance() -> None:
    devices = _devices(1, [("1c.3g.40gb", 0), ("1c.3g.40gb", 1)], 0, 4) + _devices(2, [("3g.40gb", 0)], 4, 4)
    layout = GpuMigLayout(identity(), True, True, instances_of(devices))
    plan = plan_gpu(layout, entry({"3g.40gb": 1, "2c.3g.40gb": 1}))
    assert [i.gpu_instance_id for i in plan.kept] == [2]
    assert [(s.action, s.gpu_instance_id or s.start, s.compute) for s in plan.steps] == [
        (Action.DESTROY, 1, ()),
        (Action.CREATE, 0, ((2, 0),)),
    ]
