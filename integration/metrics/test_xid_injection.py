"""Injected XIDs show up in simulation: POST /debug/sim/xid, then DCGM_FI_DEV_XID_ERRORS holds the XID
for that GPU only and nodeagent_xid_errors_total counts it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.agent import simulated_agent
from tests.support import wait_until

pytestmark = pytest.mark.integration


def xids(text: str) -> tuple[dict[str, float], dict[str, float]]:
    per_gpu: dict[str, float] = {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "DCGM_FI_DEV_XID_ERRORS":
                per_gpu[s.labels["gpu"]] = s.value
            elif s.name == "nodeagent_xid_errors_total":
                totals[s.labels["xid"]] = s.value
    return per_gpu, totals


def test_injected_xid_reaches_the_metrics(tmp_path: Path) -> None:
    with simulated_agent(tmp_path) as agent:
        per_gpu, totals = xids(agent.metrics().decode())
        assert set(per_gpu.values()) == {0} and len(per_gpu) == 8
        assert totals == {}
        request = urllib.request.Request(f"{agent.url}/debug/sim/xid?gpu=3&xid=48", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        wait_until(lambda: xids(agent.metrics().decode())[0].get("3") == 48, timeout_s=10, what="XID 48 on gpu 3")
        per_gpu, totals = xids(agent.metrics().decode())
        assert {g: v for g, v in per_gpu.items() if v} == {"3": 48}
        assert totals == {"48": 1}
