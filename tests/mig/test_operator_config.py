"""The GPU Operator's own default mig-parted ConfigMap (fixtures/), applied config by config to simulated
8-GPU nodes: every config meant for the model applies and asserts; the others are refused naming the profile
the GPU lacks, with nothing touched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.errors import ConfigError
from nodeagent.mig import service
from nodeagent.mig.config import load_file
from nodeagent.mig.observe import mig_layouts
from nodeagent.mig.planner import applied

OPERATOR = load_file(Path(__file__).parent / "fixtures" / "gpu-operator-default-mig-parted-config.yaml")
BASE = ["all-disabled", "all-enabled", "all-balanced"]
FOR_MODEL = {
    "h100-80gb-hbm3": [
        *BASE,
        "all-1g.10gb",
        "all-1g.10gb.me",
        "all-1g.20gb",
        "all-2g.20gb",
        "all-3g.40gb",
        "all-4g.40gb",
        "all-7g.80gb",
    ],
    "a100-sxm4-80gb": [
        *BASE,
        "all-1g.10gb",
        "all-1g.10gb.me",
        "all-1g.20gb",
        "all-2g.20gb",
        "all-3g.40gb",
        "all-4g.40gb",
        "all-7g.80gb",
    ],
    "a100-sxm4-40gb": [
        *BASE,
        "all-1g.5gb",
        "all-1g.5gb.me",
        "all-1g.10gb",
        "all-2g.10gb",
        "all-3g.20gb",
        "all-4g.20gb",
        "all-7g.40gb",
    ],
    "h200-141gb-hbm3e": [
        *BASE,
        "all-1g.18gb",
        "all-1g.18gb.me",
        "all-1g.35gb",
        "all-2g.35gb",
        "all-3g.71gb",
        "all-4g.71gb",
        "all-7g.141gb",
    ],
}


def test_the_fixture_is_the_whole_operator_file() -> None:
    assert len(OPERATOR.configs) == 81
    h100 = OPERATOR.select("all-balanced").entries
    assert any(str(d) == "0x233010DE" for e in h100 for d in e.device_filter)


@pytest.mark.parametrize("model", sorted(FOR_MODEL))
def test_every_config_of_the_operator_file_on_an_eight_gpu_node(model: str, tmp_path: Path) -> None:
    async def go() -> None:
        sim = SimGpuBackend(model, 8, 0)
        await sim.open()
        applied_names = []
        for name in OPERATOR.configs:
            config = OPERATOR.select(name)
            before = await sim.inventory()
            try:
                outcome = await service.apply_config(config, sim, root=Root(tmp_path), inventory=before)
            except ConfigError as err:
                assert name not in FOR_MODEL[model], f"{name}: {err}"
                assert "has no MIG profile" in str(err) or f"no entry of config {name!r} matches any GPU" in str(err)
                assert str(err).startswith(f"{OPERATOR.source}: mig-configs.")
                assert await sim.inventory() == before  # nothing touched
                continue
            assert outcome.ok, (name, outcome.reasons())
            ok, differences = applied(config, mig_layouts(await sim.inventory()))
            assert ok, (name, differences)
            applied_names.append(name)
        assert sorted(applied_names) == sorted(FOR_MODEL[model])
        await sim.close()

    asyncio.run(go())
