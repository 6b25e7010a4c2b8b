"""`promtool check metrics` on the output of `nodeagent run --simulate` (whole GPUs and 8 x 7 MIG)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from integration.agent import simulated_agent
from tests.support import require

pytestmark = pytest.mark.integration

# dcgm-exporter's names break promtool's style rules; users' dashboards need exactly those names.
ACCEPTED_LINT = (
    "label names should be written in 'snake_case' not 'camelCase'",
    'should have "_total" suffix',
    "metric name should not include type 'counter'",
)


@pytest.mark.parametrize("mig_layout", ["", "1g.10gb*7"])
def test_promtool_check_metrics(tmp_path: Path, mig_layout: str) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (Debian package prometheus)")
    assert promtool is not None
    with simulated_agent(tmp_path, {"NODEAGENT_SIMULATION__MIG_LAYOUT": mig_layout}) as agent:
        body = agent.metrics()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode in (0, 3), output  # 1 would mean the exposition did not parse
    problems = [line for line in output.splitlines() if line.strip() and not line.endswith(ACCEPTED_LINT)]
    assert not problems, problems
    text = body.decode()
    assert "process_resident_memory_bytes" in text and "nodeagent_subsystem_up" in text
    # The first scrape after ready already has the profiling (GPM) fields: no wait for a second slow sweep.
    assert text.count("DCGM_FI_PROF_GR_ENGINE_ACTIVE{") == (56 if mig_layout else 8)
    if mig_layout:
        assert text.count("DCGM_FI_DEV_FB_USED{") == 56
        assert 'GPU_I_PROFILE="1g.10gb"' in text
