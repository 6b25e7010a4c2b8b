"""Plans: what a subsystem would change on the node, computed before anything is changed.

A Plan is pure data. ``nodeagent plan`` renders every subsystem's plan as a diff; ``apply`` hands the
same plan back to the subsystem that made it. Steps carry an opaque ``payload`` for the subsystem's own
executor (for example the new bytes of a file); it is not rendered and not compared.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Disruption(StrEnum):
    """What a step interrupts on the node, from harmless to most disruptive."""

    NONE = "none"
    RELOAD = "reload"
    RESTART = "restart"
    GPU_RESET = "gpu-reset"


@dataclass(frozen=True)
class Step:
    """One change: a file write, a module load, a restart, a label patch."""

    action: str
    """Short machine-readable verb, e.g. ``write-file``, ``load-module``, ``restart-runtime``."""
    target: str
    """What is changed: a host path, a module, a service, a GPU."""
    summary: str
    """One human sentence, e.g. 'add runtime nvidia to containerd (drop-in mode)'."""
    diff: str = ""
    """Unified diff for file changes; empty for other steps."""
    disruption: Disruption = Disruption.NONE
    disrupts: str = ""
    """What the disruption hits, e.g. ``containerd`` for a restart."""
    payload: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Plan:
    """Everything one subsystem would do, with what it observed to decide so."""

    subsystem: str
    steps: tuple[Step, ...] = ()
    evidence: tuple[str, ...] = ()
    """Facts observed that the plan rests on, e.g. 'distribution k0s: /etc/k0s/containerd.toml exists'."""
    warnings: tuple[str, ...] = ()
    error: str = ""
    """Set when observation failed and no plan could be made; the reason names file and key."""

    @property
    def empty(self) -> bool:
        """A node already in the desired state has an empty plan."""
        return not self.steps

    @property
    def disruption(self) -> Disruption:
        """The most disruptive step's disruption."""
        order = list(Disruption)
        return max((s.disruption for s in self.steps), key=order.index, default=Disruption.NONE)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view (payloads excluded) for /status and ``plan --json``."""
        return {
            "subsystem": self.subsystem,
            "error": self.error,
            "evidence": list(self.evidence),
            "warnings": list(self.warnings),
            "steps": [
                {
                    "action": s.action,
                    "target": s.target,
                    "summary": s.summary,
                    "disruption": str(s.disruption),
                    "disrupts": s.disrupts,
                    "diff": s.diff,
                }
                for s in self.steps
            ],
        }


def file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    """Unified diff between two versions of a file; ``None`` means absent."""
    before = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    after = (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    lines = difflib.unified_diff(
        before,
        after,
        fromfile="/dev/null" if old is None else f"a{path}",
        tofile="/dev/null" if new is None else f"b{path}",
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def render_plans(plans: Sequence[Plan], *, color: bool = False) -> str:
    """Render plans for a person: evidence, warnings, then each step with its disruption and diff."""
    out: list[str] = []
    for plan in plans:
        out.append(f"== {plan.subsystem} ==")
        out.extend(f"  evidence: {e}" for e in plan.evidence)
        out.extend(f"  WARNING: {w}" for w in plan.warnings)
        if plan.error:
            out.append(f"  ERROR: {plan.error}")
        elif plan.empty:
            out.append("  no changes: already in the desired state")
        for i, step in enumerate(plan.steps, 1):
            hit = f" ({step.disrupts})" if step.disrupts else ""
            out.append(f"  {i}. [{step.disruption}{hit}] {step.action} {step.target}: {step.summary}")
            if step.diff:
                out.extend(_indent(_colorize(step.diff) if color else step.diff))
        out.append("")
    return "\n".join(out)


def _indent(text: str) -> Iterable[str]:
    return ("     " + line for line in text.rstrip("\n").split("\n"))


def _colorize(diff: str) -> str:
    def paint(line: str) -> str:
        if line.startswith("+") and not line.startswith("+++"):
            return f"\x1b[32m{line}\x1b[0m"
        if line.startswith("-") and not line.startswith("---"):
            return f"\x1b[31m{line}\x1b[0m"
        return line

    return "\n".join(paint(line) for line in diff.split("\n"))
