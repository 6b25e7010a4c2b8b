"""Coexistence with nvidia-ctk's specs: never two specs for nvidia.com/gpu; stay out with a named reason,
or take over (backed up, restored by revert)."""

from __future__ import annotations

from pathlib import Path

import yaml

from nodeagent.backends.sim import sandbox
from nodeagent.cdi import coexist
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.driver.subsystem import DriverSubsystem
from nodeagent.subsystem import Context, Phase
from tests.driver.fakes import make_ctx, make_settings

OURS = "/var/run/cdi/nvidia.yaml"
# The shape of `nvidia-ctk cdi generate` output (its generate tests): no header, hooks run nvidia-cdi-hook.
NVIDIA_CTK_SPEC = b"""---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
    - name: "0"
      containerEdits:
        deviceNodes:
            - path: /dev/nvidia0
    - name: all
      containerEdits:
        deviceNodes:
            - path: /dev/nvidia0
containerEdits:
    hooks:
        - hookName: createContainer
          path: /usr/bin/nvidia-cdi-hook
          args: [nvidia-cdi-hook, update-ldcache]
"""
IMEX_SPEC = b"cdiVersion: 0.5.0\nkind: nvidia.com/imex-channel\ndevices: [{name: '0', containerEdits: {}}]\n"


async def _node(tmp_path: Path, policy: str) -> Context:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv, make_settings(cdi={"other_specs": policy}))
    sandbox.populate_sandbox(ctx.root, inv)
    await DriverSubsystem(ctx).start()
    return ctx


def _specs_for_gpu(ctx: Context) -> list[str]:
    out = []
    for directory in coexist.SPEC_DIRS:
        for name in ctx.root.listdir(directory):
            data = ctx.root.read_bytes(f"{directory}/{name}") or b""
            if yaml.safe_load(data).get("kind") == "nvidia.com/gpu":
                out.append(f"{directory}/{name}")
    return out


async def test_stay_out_names_the_other_spec_and_takes_ours_away(tmp_path: Path) -> None:
    ctx = await _node(tmp_path, "stay-out")
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    assert cdi.status().phase is Phase.RUNNING and ctx.root.exists(OURS)
    ctx.root.write_atomic("/etc/cdi/nvidia.yaml", NVIDIA_CTK_SPEC)  # someone ran nvidia-ctk cdi generate
    ctx.root.write_atomic("/etc/cdi/imex.yaml", IMEX_SPEC)  # another kind: no conflict
    await cdi.refresh()
    status = cdi.status()
    assert status.phase is Phase.DEGRADED
    assert "/etc/cdi/nvidia.yaml (nvidia-ctk, 2 devices)" in status.reason
    assert "cdi.other_specs = stay-out" in status.reason
    assert _specs_for_gpu(ctx) == ["/etc/cdi/nvidia.yaml"], "never two specs for the same devices"
    assert ctx.root.read_bytes("/etc/cdi/nvidia.yaml") == NVIDIA_CTK_SPEC
    await cdi.refresh()  # steady: nothing to do, same reason
    assert cdi.status().reason == status.reason


async def test_stay_out_when_nvidia_cdi_refresh_owns_our_path(tmp_path: Path) -> None:
    ctx = await _node(tmp_path, "stay-out")
    ctx.root.write_atomic(OURS, NVIDIA_CTK_SPEC)  # nvidia-cdi-refresh writes the same file name
    cdi = CdiSubsystem(ctx)
    plan = cdi.plan(await cdi.observe())
    assert plan.steps == ()
    assert any(f"{OURS} (nvidia-ctk" in w for w in plan.warnings)
    await cdi.start()
    assert ctx.root.read_bytes(OURS) == NVIDIA_CTK_SPEC


async def test_take_over_is_backed_up_and_revert_restores_it(tmp_path: Path) -> None:
    ctx = await _node(tmp_path, "take-over")
    ctx.root.write_atomic("/etc/cdi/nvidia.yaml", NVIDIA_CTK_SPEC)
    ctx.root.write_atomic(OURS, NVIDIA_CTK_SPEC)
    cdi = CdiSubsystem(ctx)
    plan = cdi.plan(await cdi.observe())
    assert [(s.action, s.target) for s in plan.steps] == [
        ("remove-file", "/etc/cdi/nvidia.yaml"),
        ("write-file", OURS),
    ]
    assert any("nvidia-cdi-refresh" in w and "nodeagent revert" in w for w in plan.warnings)
    await cdi.apply(plan)
    assert _specs_for_gpu(ctx) == [OURS]
    assert (ctx.root.read_bytes(OURS) or b"").startswith(coexist.OUR_HEADER)
    again = cdi.plan(await cdi.observe())
    assert again.steps == () and not again.warnings, "our own spec is not another generator's"
    changed = (await cdi.revert()).changed
    assert set(changed) == {OURS, "/etc/cdi/nvidia.yaml"}
    assert ctx.root.read_bytes(OURS) == NVIDIA_CTK_SPEC
    assert ctx.root.read_bytes("/etc/cdi/nvidia.yaml") == NVIDIA_CTK_SPEC


def test_decide_is_pure_and_var_run_is_run() -> None:
    other = coexist.OtherSpec("/run/cdi/nvidia.yaml", "nvidia-ctk", 9)
    take = coexist.decide([other], "take-over", OURS, ours_present=False)
    assert (take.write_ours, take.remove, take.overwrite_other) == (True, (), "/run/cdi/nvidia.yaml")
    stay = coexist.decide([other], "stay-out", OURS, ours_present=True)
    assert (stay.write_ours, stay.remove) == (False, (OURS,))
    assert coexist.decide([], "stay-out", OURS, ours_present=True) == coexist.Decision(write_ours=True)
