"""dcgm-exporter's own Grafana dashboard, evaluated by a real Prometheus against simulated nodes.

One Prometheus scrapes three `nodeagent run --simulate` nodes of 8 H100s: without MIG, with MIG
(3g.40gb x 2 per GPU) in the default dcgm-exporter mode, and with MIG in ``first-instance`` mode. Each
panel's query (and the dashboard's ``instance`` / ``gpu`` variables) is evaluated as Grafana would,
per node:

- every panel returns data, one series per GPU (or per GPU instance on MIG), with the ``gpu`` label its
  legend uses; except "GPU Utilization" on MIG nodes: NVML has no utilization rates for a GPU in MIG
  mode, so dcgm-exporter shows none either (DCGM_FI_PROF_GR_ENGINE_ACTIVE is the MIG-era metric);
- totals are right: "GPU Power Total" equals the sum of each GPU's power without MIG and in
  first-instance mode; in the default mode every GPU instance repeats its GPU's power, exactly as
  dcgm-exporter does (DCGM answers GPU-level fields of a GPU instance with the parent's value), so the
  panel reads 2x with two instances per GPU; "GPU Avg. Temp" is right in every mode;
- promtool accepts every node's exposition.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.agent import Agent, get, simulated_agent
from integration.metrics.prometheus import job, prometheus
from tests.support import require, wait_until

pytestmark = pytest.mark.integration

DASHBOARD = json.loads((Path(__file__).parent / "data" / "dcgm-exporter-dashboard.json").read_text())
GPUS = 8  # `--simulate` (integration.agent) asks for the default 8 H100s
INSTANCES_PER_GPU = 2
NODES: dict[str, dict[str, str]] = {
    "plain": {},
    "mig": {"NODEAGENT_SIMULATION__MIG_LAYOUT": "3g.40gb*2"},
    "mig-first": {
        "NODEAGENT_SIMULATION__MIG_LAYOUT": "3g.40gb*2",
        "NODEAGENT_METRICS__MIG_WHOLE_GPU_FIELDS": "first-instance",
    },
}
ACCEPTED_LINT = (
    "label names should be written in 'snake_case' not 'camelCase'",
    'should have "_total" suffix',
    "metric name should not include type 'counter'",
)


def panels() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def query(url: str, promql: str) -> list[dict[str, Any]]:
    status, body = get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert status == 200, body
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def scalar(url: str, promql: str) -> float:
    (only,) = query(url, promql)
    return float(only["value"][1])


def label_values(url: str, label: str, metric: str, instance: str = ".*") -> list[str]:
    """Grafana's label_values(metric, label), restricted to one node as the $instance choice does."""
    match = f'{metric}{{instance=~"{instance}"}}'
    status, body = get(f"{url}/api/v1/label/{label}/values?{urllib.parse.urlencode({'match[]': match})}")
    assert status == 200, body
    values: list[str] = json.loads(body)["data"]
    return values


def promql_regex(value: str) -> str:
    """A literal inside a PromQL regex string, escaped as Grafana's Prometheus data source does."""
    return re.escape(value).replace("\\", "\\\\")


def expand(expr: str, instance: str, gpus: list[str]) -> str:
    """The dashboard's variables as Grafana substitutes a choice: one instance, every GPU."""
    return expr.replace("$instance", promql_regex(instance)).replace("$gpu", "|".join(gpus))


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[str, dict[str, Agent]]]:
    with contextlib.ExitStack() as stack:
        agents: dict[str, Agent] = {}
        for name, env in NODES.items():
            home = tmp_path / name
            home.mkdir()
            settings = {"NODEAGENT_METRICS__SLOW_INTERVAL_S": "1", **env}
            agents[name] = stack.enter_context(simulated_agent(home, settings))
        jobs = "".join(job(name, a.url.removeprefix("http://")) for name, a in agents.items())
        url = stack.enter_context(prometheus(tmp_path, jobs))
        yield url, agents


def test_every_panel_of_dcgm_exporters_dashboard(scraped: tuple[str, dict[str, Agent]]) -> None:
    url, agents = scraped
    instance = {name: a.url.removeprefix("http://") for name, a in agents.items()}
    # Every node scraped, GPM readings (tensor activity) in: the slowest panel has data everywhere.
    wait_until(
        lambda: len(query(url, "count by (job) (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE)")) == len(NODES),
        timeout_s=90,
        what="every node's profiling metrics in Prometheus",
        step_s=1.0,
    )
    assert sorted(label_values(url, "instance", "DCGM_FI_DEV_GPU_TEMP")) == sorted(instance.values())
    for name, inst in instance.items():
        gpus = label_values(url, "gpu", "DCGM_FI_DEV_GPU_TEMP", promql_regex(inst))
        assert sorted(gpus, key=int) == [str(i) for i in range(GPUS)], name
        series_per_gpu = 1 if name == "plain" else INSTANCES_PER_GPU
        for title, expr in panels():
            result = query(url, expand(expr, inst, gpus))
            if name != "plain" and title == "GPU Utilization":
                assert result == [], "NVML has no utilization rates in MIG mode; nor has dcgm-exporter"
                continue
            assert result, f"{name}: panel {title!r} has no data: {expr}"
            if expr.startswith(("sum(", "avg(")):
                assert len(result) == 1, title
                continue
            assert {r["metric"]["gpu"] for r in result} == set(gpus), f"{name}: {title}"
            whole_gpu = title in ("GPU Temperature", "GPU Power Usage", "GPU SM Clocks")
            expected = 1 if whole_gpu and name == "mig-first" else series_per_gpu
            assert len(result) == GPUS * expected, f"{name}: {title}"

        power = f'DCGM_FI_DEV_POWER_USAGE{{instance="{inst}"}}'
        per_gpu_total = f"sum(max by (gpu) ({power}))"
        panel_total = expand(dict(panels())["GPU Power Total"], inst, gpus)
        ratio = scalar(url, f"({panel_total}) / {per_gpu_total}")
        want = INSTANCES_PER_GPU if name == "mig" else 1  # dcgm-exporter's own over-count, kept for parity
        assert ratio == pytest.approx(want), name
        temp = f'DCGM_FI_DEV_GPU_TEMP{{instance="{inst}"}}'
        avg_panel = expand(dict(panels())["GPU Avg. Temp"], inst, gpus)
        assert scalar(url, f"({avg_panel}) - avg(max by (gpu) ({temp}))") == pytest.approx(0.0, abs=1e-9), name


def test_promtool_accepts_every_nodes_exposition(scraped: tuple[str, dict[str, Agent]]) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (Debian package prometheus)")
    assert promtool is not None
    _url, agents = scraped
    for name, agent in agents.items():
        body = agent.metrics()
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
        )
        output = (result.stdout + result.stderr).decode()
        assert result.returncode in (0, 3), f"{name}: {output}"
        problems = [line for line in output.splitlines() if line.strip() and not line.endswith(ACCEPTED_LINT)]
        assert not problems, (name, problems)
