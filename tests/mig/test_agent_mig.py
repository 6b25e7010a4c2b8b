"""The whole simulated agent (a subprocess) with ``mig.config`` set: the layout is applied at start while
/metrics is scraped, and the metrics (GPU_I_PROFILE / GPU_I_ID series), the CDI spec and /status follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from integration.agent import simulated_agent
from tests.support import wait_until

pytestmark = pytest.mark.integration


def test_agent_applies_mig_and_everything_follows(tmp_path: Path) -> None:
    env = {"NODEAGENT_MIG__CONFIG": "all-balanced"}
    with simulated_agent(tmp_path, env) as agent:
        seen: list[bytes] = []

        def mig_series() -> bool:
            body = agent.metrics()
            seen.append(body)
            return b'GPU_I_PROFILE="3g.40gb"' in body

        wait_until(mig_series, timeout_s=30, what="MIG series on /metrics")
        body = seen[-1].decode()
        profiles = set(re.findall(r'GPU_I_PROFILE="([^"]+)"', body))
        assert profiles == {"1g.10gb", "2g.20gb", "3g.40gb"}
        status = agent.status()
        mig = status["subsystems"]["mig"]
        assert mig["details"]["state"] == "success", mig

        spec_path = tmp_path / "root/var/run/cdi/nvidia.yaml"

        def cdi_has_mig() -> bool:
            if not spec_path.exists():
                return False
            spec = yaml.safe_load(spec_path.read_text())
            return any(d["name"] == "7:3" for d in spec["devices"])

        wait_until(cdi_has_mig, timeout_s=30, what="MIG devices in the CDI spec")
        assert 'nodeagent_mig_config_state{config="all-balanced",state="success"} 1.0' in agent.metrics().decode()
