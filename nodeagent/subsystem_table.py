"""The explicit list of subsystems, in dependency order (driver → MIG → runtime/CDI → metrics; validation files).

Each entry is imported lazily by dotted path, so a subsystem's dependencies are loaded only when it is
enabled (design.md: keep imports lazy). The agent orders them by ``requires`` again at start, so this
list's order is for readers, not a source of truth.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.errors import ConfigError
from nodeagent.settings import Settings


@dataclass(frozen=True)
class Entry:
    name: str
    target: str
    """``module:Class``."""
    requires: tuple[str, ...]
    needs_gpu: bool = True
    """False for subsystems that work without a GPU backend (runtime config before a driver exists)."""
    companion_of: tuple[str, ...] = ()
    """Chosen with any of these by ``--only`` (the validation files follow the driver and the runtime)."""

    def load(self) -> type:
        module, _, attr = self.target.partition(":")
        cls: type = getattr(importlib.import_module(module), attr)
        return cls


SUBSYSTEMS: tuple[Entry, ...] = (
    Entry("driver", "nodeagent.driver.subsystem:DriverSubsystem", ()),
    Entry("mig", "nodeagent.mig.subsystem:MigSubsystem", ("driver",)),
    Entry("runtime", "nodeagent.runtime.subsystem:RuntimeSubsystem", ("driver",), needs_gpu=False),
    Entry("cdi", "nodeagent.cdi.subsystem:CdiSubsystem", ("driver",)),
    Entry("metrics", "nodeagent.metrics.subsystem:MetricsSubsystem", ("driver",)),
    Entry("labels", "nodeagent.labels.subsystem:LabelsSubsystem", ("driver",)),
    Entry("gpuhealth", "nodeagent.gpuhealth.subsystem:GpuHealthSubsystem", ()),
    Entry(
        "validation",
        "nodeagent.validation.subsystem:ValidationSubsystem",
        (),
        needs_gpu=False,
        companion_of=("driver", "runtime", "mig"),
    ),
)

BY_NAME = {e.name: e for e in SUBSYSTEMS}


def enabled(settings: Settings, only: Iterable[str] = ()) -> list[Entry]:
    """The enabled subsystems (restricted to ``only`` when given), in dependency order."""
    only = list(only) or list(settings.agent.only)
    for name in only:
        if name not in BY_NAME:
            raise ConfigError(f"unknown subsystem {name!r}; valid: {', '.join(BY_NAME)}", key="agent.only")
    chosen = [
        e
        for e in SUBSYSTEMS
        if getattr(getattr(settings, e.name, None), "enabled", True)
        and (not only or e.name in only or any(c in only for c in e.companion_of))
    ]
    return dependency_order(chosen)


def dependency_order(entries: Sequence[Entry]) -> list[Entry]:
    """Topological order; a requirement that is not enabled is ignored (``--only`` narrows the set)."""
    names = {e.name for e in entries}
    ordered: list[Entry] = []
    placed: set[str] = set()
    visiting: set[str] = set()
    by_name = {e.name: e for e in entries}

    def visit(e: Entry) -> None:
        if e.name in placed:
            return
        if e.name in visiting:
            raise ConfigError(f"dependency cycle through {e.name!r}")
        visiting.add(e.name)
        for dep in e.requires:
            if dep in names:
                visit(by_name[dep])
        visiting.discard(e.name)
        placed.add(e.name)
        ordered.append(e)

    for e in entries:
        visit(e)
    return ordered
