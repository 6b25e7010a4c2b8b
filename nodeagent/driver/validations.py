"""The GPU Operator's validation files under /run/nvidia/validations, for tools that still wait on them.

``driver-ready`` carries the KEY=VALUE lines the operator's validator writes (consumers ``source`` it);
``toolkit-ready`` is an empty marker. Each is written atomically when its condition holds and removed when
it stops holding. Inside the agent, readiness travels on the event bus; these files are for others.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from nodeagent.driver.facts import DriverFacts

DRIVER_READY = "driver-ready"
TOOLKIT_READY = "toolkit-ready"


def driver_ready_content(facts: DriverFacts) -> bytes:
    """IS_HOST_DRIVER, NVIDIA_DRIVER_ROOT / DRIVER_ROOT_CTR_PATH, NVIDIA_DEV_ROOT / DEV_ROOT_CTR_PATH."""
    lines = [
        f"IS_HOST_DRIVER={'true' if facts.is_host_driver else 'false'}",
        f"NVIDIA_DRIVER_ROOT={facts.root_in_runtime}",
        f"DRIVER_ROOT_CTR_PATH={facts.root_in_agent}",
        f"NVIDIA_DEV_ROOT={facts.dev_root}",
        f"DEV_ROOT_CTR_PATH={facts.dev_root_in_agent}",
    ]
    return ("\n".join(lines) + "\n").encode()


def path_of(validations_dir: str, name: str) -> str:
    return str(PurePosixPath(validations_dir, name))
