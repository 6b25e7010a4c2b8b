"""The GPU Operator's validation files under /run/nvidia/validations (pure): names, content, the plan.

``driver-ready`` carries the KEY=VALUE lines the operator's validator writes (consumers ``source`` it);
``toolkit-ready`` and ``mig-ready`` are empty markers. Each is written when its condition holds and removed
when it stops holding. Inside the agent, readiness travels on the event bus; these files are for others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from nodeagent.model.driver import DriverFacts
from nodeagent.plan import Plan, Step, file_diff

DRIVER_READY = "driver-ready"
TOOLKIT_READY = "toolkit-ready"
MIG_READY = "mig-ready"
ALL = (DRIVER_READY, TOOLKIT_READY, MIG_READY)


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


@dataclass(frozen=True)
class Conditions:
    """What the files stand for, as the agent knows it now (None: not known, leave the file alone)."""

    driver: DriverFacts | None
    driver_known: bool
    """False when nothing has said whether the driver is ready (then driver-ready is left as it is)."""
    runtime_healthy: bool | None = None
    mig_ready: bool | None = None


@dataclass(frozen=True)
class Observed:
    conditions: Conditions
    existing: dict[str, bytes | None]
    """File name → current content (None when absent)."""


def plan(observed: Observed, validations_dir: str, *, subsystem: str = "validation") -> Plan:
    """Write each file whose condition holds and whose content differs; remove each whose condition fails."""
    c = observed.conditions
    wanted: dict[str, bytes | None] = {}
    reasons: dict[str, str] = {}
    if c.driver_known:
        wanted[DRIVER_READY] = driver_ready_content(c.driver) if c.driver is not None else None
        reasons[DRIVER_READY] = (
            "GPU Operator-compatible driver validation file" if c.driver else "the driver is not ready"
        )
    if c.runtime_healthy is not None or (c.driver is None and c.driver_known):
        ok = bool(c.runtime_healthy) and c.driver is not None
        wanted[TOOLKIT_READY] = b"" if ok else None
        reasons[TOOLKIT_READY] = "runtime healthy: toolkit validation marker" if ok else "runtime or driver not healthy"
    if c.mig_ready is not None:
        wanted[MIG_READY] = b"" if c.mig_ready else None
        reasons[MIG_READY] = "MIG layout applied: mig validation marker" if c.mig_ready else "MIG layout not applied"
    steps: list[Step] = []
    for name, content in wanted.items():
        path = path_of(validations_dir, name)
        current = observed.existing.get(name)
        if content is not None and current != content:
            steps.append(
                Step("write-file", path, reasons[name], diff=file_diff(path, current, content), payload=content)
            )
        elif content is None and current is not None:
            steps.append(Step("remove-file", path, reasons[name], diff=file_diff(path, current, None)))
    evidence = tuple(f"{name}: {'present' if observed.existing.get(name) is not None else 'absent'}" for name in ALL)
    return Plan(subsystem, steps=tuple(steps), evidence=evidence)
