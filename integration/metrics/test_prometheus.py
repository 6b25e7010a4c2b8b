"""A real Prometheus (the Debian package) scrapes `nodeagent run --simulate` every second for about
20 s; its HTTP API must then show DCGM_FI_DEV_GPU_TEMP and DCGM_FI_DEV_FB_USED for every simulated GPU
with dcgm-exporter's labels, and the agent's own metrics."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.agent import NODE_NAME, Agent, get, simulated_agent
from integration.metrics.prometheus import job, prometheus
from tests.support import wait_until

pytestmark = pytest.mark.integration

SCRAPE_RUN_S = 20


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    with contextlib.ExitStack() as stack:
        agent = stack.enter_context(simulated_agent(tmp_path))
        url = stack.enter_context(prometheus(tmp_path, job("nodeagent", agent.url.removeprefix("http://"))))
        yield agent, url


def query(url: str, promql: str) -> list[dict[str, Any]]:
    status, body = get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert status == 200, body
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def test_prometheus_scrapes_every_gpu_with_dcgm_labels(scraped: tuple[Agent, str]) -> None:
    agent, url = scraped
    started = time.monotonic()
    # ~20 s of 1 s scrapes: wait (with a deadline) until Prometheus holds that many samples per GPU
    wait_until(
        lambda: len(query(url, f"count_over_time(DCGM_FI_DEV_GPU_TEMP[1m]) >= {SCRAPE_RUN_S}")) == 8,
        timeout_s=SCRAPE_RUN_S + 40,
        what=f"{SCRAPE_RUN_S} scrapes of every GPU",
        step_s=1.0,
    )
    assert time.monotonic() - started >= SCRAPE_RUN_S - 2
    inventory = agent.status()["inventory"]
    gpus = {str(g["index"]): g for g in inventory["gpus"]}
    assert len(gpus) == 8
    for metric in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED"):
        result = query(url, metric)
        assert {r["metric"]["gpu"] for r in result} == set(gpus), metric
        for r in result:
            labels, gpu = r["metric"], gpus[r["metric"]["gpu"]]
            assert labels["UUID"] == gpu["uuid"]
            assert labels["pci_bus_id"] == gpu["pci_bus_id"]
            assert labels["device"] == f"nvidia{gpu['index']}"  # dcgm-exporter: the index, not the minor
            assert labels["modelName"] == gpu["name"] == "NVIDIA H100 80GB HBM3"
            assert labels["Hostname"] == NODE_NAME
            assert labels["DCGM_FI_DRIVER_VERSION"] == inventory["driver_version"]
            assert labels["job"] == "nodeagent"
            assert len(labels) < 20 + 2  # + job and instance, added by Prometheus
            assert float(r["value"][1]) >= 0
    assert {r["metric"]["gpu"] for r in query(url, "DCGM_FI_DEV_GPU_TEMP > 20 < 100")} == set(gpus)
    # every scrape succeeded, data stayed fresh, and the agent's own metrics arrived with the GPU series
    assert query(url, "min_over_time(up[30s])")[0]["value"][1] == "1"
    assert float(query(url, "max_over_time(nodeagent_snapshot_age_seconds[30s])")[0]["value"][1]) < 5
    up = {r["metric"]["subsystem"]: r["value"][1] for r in query(url, "nodeagent_subsystem_up")}
    assert up.get("metrics") == "1"
    assert query(url, "process_resident_memory_bytes"), "process metrics are served too"
    assert float(query(url, "max_over_time(scrape_duration_seconds[30s])")[0]["value"][1]) < 0.5
