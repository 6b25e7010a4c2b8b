"""The CDI warning about device nodes that are not there yet: a count and the first few, not every path."""

from __future__ import annotations

from pathlib import Path

from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem, missing_nodes_text
from tests.driver.fakes import make_ctx


def test_the_text_counts_and_names_the_first_few() -> None:
    assert missing_nodes_text(["/dev/a"]) == "1 device node not present yet: /dev/a"
    assert (
        missing_nodes_text(["/dev/a", "/dev/b", "/dev/c"]) == "3 device nodes not present yet: /dev/a, /dev/b, /dev/c"
    )
    paths = [f"/dev/nvidia-caps/nvidia-cap{i}" for i in range(64)]
    text = missing_nodes_text(paths)
    assert text == (
        "64 device nodes not present yet: /dev/nvidia-caps/nvidia-cap0, /dev/nvidia-caps/nvidia-cap1, "
        "/dev/nvidia-caps/nvidia-cap2 and 61 more"
    )


async def test_the_plan_warns_with_the_short_text(tmp_path: Path) -> None:
    # Two GPUs with two MIG instances each, their /dev/nvidia-caps nodes not made yet: 8 missing.
    inv = sandbox.sandbox_inventory(2, mig_on=(0, 1))
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    cdi = CdiSubsystem(ctx)
    plan = cdi.plan(await cdi.observe())
    (warning,) = [w for w in plan.warnings if "not present yet" in w]
    assert warning.startswith("8 device nodes not present yet: /dev/nvidia-caps/nvidia-cap")
    assert warning.endswith(" and 5 more") and warning.count("/dev/") == 3
