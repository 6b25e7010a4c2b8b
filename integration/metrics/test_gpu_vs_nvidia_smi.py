"""On a real GPU: our DCGM series agree with `nvidia-smi --query-gpu`. Skipped without an NVIDIA driver.

Tolerances (the two readings are taken up to a second apart, by different calls):
- FB_USED, FB_FREE: within 1 % of the GPU's total memory (~815 MiB on an 80 GB H100). NVML's v2 memory
  info puts the driver-reserved region (~480 MiB on our H100) in FB_RESERVED; nvidia-smi may count
  it as used, depending on the driver version.
- GPU_TEMP: within 3 C.
- POWER_USAGE: within 15 % or 30 W, whichever is larger (power moves within a second).
- SM_CLOCK: within 15 % (clocks step between idle and boost).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from integration.metrics.gpu import driver_present, nvidia_smi

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

QUERY = "index,memory.total,memory.used,memory.free,temperature.gpu,power.draw,clocks.sm"


def smi_readings() -> dict[int, dict[str, float]]:
    smi = nvidia_smi()
    assert smi is not None
    out = subprocess.run(
        [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    rows: dict[int, dict[str, float]] = {}
    for line in out.strip().splitlines():
        index, total, used, free, temp, power, sm = (c.strip() for c in line.split(","))
        rows[int(index)] = {
            "total": float(total),
            "used": float(used),
            "free": float(free),
            "temp": float(temp),
            "power": float(power) if power not in ("[N/A]", "N/A") else float("nan"),
            "sm": float(sm),
        }
    return rows


async def test_dcgm_series_match_nvidia_smi(tmp_path: Path) -> None:
    if not driver_present():
        pytest.skip("no NVIDIA driver")
    from prometheus_client.parser import text_string_to_metric_families

    from nodeagent import testing
    from nodeagent.backends.gpu.nvml.backend import NvmlBackend
    from nodeagent.backends.hostfs import Root
    from nodeagent.metrics.exposition import Format
    from nodeagent.metrics.subsystem import MetricsSubsystem
    from nodeagent.settings import load

    gpus = NvmlBackend()
    await gpus.open()
    try:
        settings = load(env={"NODEAGENT_METRICS__POD_ATTRIBUTION": "0"})
        ctx = testing.context(Root(tmp_path), settings, gpus=gpus, node_name="gpu-test")
        sub = MetricsSubsystem(ctx)
        await sub.start()
        smi = smi_readings()
        assert sub.exposition is not None
        text = sub.exposition.body(Format.TEXT, False, time.time()).decode()
        await sub.stop()
    finally:
        await gpus.close()

    ours: dict[str, dict[int, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "GPU_I_ID" not in s.labels:
                ours.setdefault(s.name, {})[int(s.labels["gpu"])] = s.value
    whole = [i for i in smi if i in ours.get("DCGM_FI_DEV_GPU_TEMP", {})]
    assert whole, "no whole-GPU series (every GPU in MIG mode?)"
    for i in whole:
        ref = smi[i]
        fb_tolerance = 0.01 * ref["total"]
        assert abs(ours["DCGM_FI_DEV_FB_USED"][i] - ref["used"]) <= fb_tolerance, (
            i,
            ours["DCGM_FI_DEV_FB_USED"][i],
            ref,
        )
        assert abs(ours["DCGM_FI_DEV_FB_FREE"][i] - ref["free"]) <= fb_tolerance, (
            i,
            ours["DCGM_FI_DEV_FB_FREE"][i],
            ref,
        )
        assert abs(ours["DCGM_FI_DEV_GPU_TEMP"][i] - ref["temp"]) <= 3, (i, ref)
        if ref["power"] == ref["power"]:
            power = ours["DCGM_FI_DEV_POWER_USAGE"][i]
            assert abs(power - ref["power"]) <= max(30.0, 0.15 * ref["power"]), (i, power, ref)
        sm = ours["DCGM_FI_DEV_SM_CLOCK"][i]
        assert abs(sm - ref["sm"]) <= 0.15 * max(ref["sm"], sm), (i, sm, ref)
