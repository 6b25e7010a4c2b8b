"""One-shot commands (plan, apply, revert, local status) over built-but-not-started subsystems.

Subsystems are taken in dependency order; each one's observe → plan (→ apply) runs once. Nothing runs
long enough to publish events here, so a subsystem that needs another's facts in a one-shot (CDI needs
the driver root) works them out itself with the same pure functions.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import structlog

from nodeagent.errors import NodeAgentError
from nodeagent.health import status_document
from nodeagent.plan import Plan, render_plans
from nodeagent.subsystem import Describes, Phase, Reconciler, Revertible, Service, Status
from nodeagent.subsystem import make_plan as _reconciler_plan

if TYPE_CHECKING:
    from nodeagent.compose import Parts

log = structlog.get_logger("nodeagent.commands")


async def make_plan(sub: Service) -> Plan:
    """A reconciler's plan (observe + plan), or what a service says it would do; never raises."""
    if isinstance(sub, Reconciler):
        return await _reconciler_plan(sub)
    if isinstance(sub, Describes):
        return await sub.describe()
    return Plan(sub.name)


async def plan(parts: Parts, *, as_json: bool, color: bool) -> int:
    plans = [await make_plan(sub) for sub in parts.subsystems]
    if as_json:
        print(json.dumps([p.to_json() for p in plans], indent=2))
    else:
        sys.stdout.write(render_plans(plans, color=color))
    return _failed(parts) if any(p.error for p in plans) else 0


def _failed(parts: Parts) -> int:
    """2 when a subsystem failed on a bad input file or setting, else 1."""
    return 2 if any(getattr(sub, "bad_input", False) for sub in parts.subsystems) else 1


async def apply(parts: Parts) -> int:
    done: list[str] = []
    try:
        return await _apply_each(parts, done)
    except asyncio.CancelledError:  # Ctrl-C: say what was applied and what was not, then exit 130
        left = [s.name for s in parts.subsystems if s.name not in done]
        print(
            f"interrupted: applied {', '.join(done) or 'nothing'}; not applied: {', '.join(left)} "
            "(the one in progress may be partly applied: `nodeagent plan` shows what remains, "
            "`nodeagent revert` restores the originals)",
            file=sys.stderr,
        )
        raise


async def _apply_each(parts: Parts, done: list[str]) -> int:
    failed = False
    for sub in parts.subsystems:
        p = await make_plan(sub)
        if p.error:
            print(f"{sub.name}: cannot plan: {p.error}", file=sys.stderr)
            failed = True
            continue
        if p.empty or not isinstance(sub, Reconciler):
            print(f"{sub.name}: already in the desired state")
            done.append(sub.name)
            continue
        try:
            result = await sub.apply(p)
        except NodeAgentError as err:
            print(f"{sub.name}: apply failed: {err}", file=sys.stderr)
            failed = True
            continue
        changed = ", ".join(result.changed) or "nothing"
        restarted = f"; restarted {', '.join(result.restarted)}" if result.restarted else ""
        print(f"{sub.name}: changed {changed}{restarted}")
        done.append(sub.name)
        for message in result.messages:
            print(f"  {message}")
    return _failed(parts) if failed else 0


async def revert(parts: Parts, *, force: bool = False) -> int:
    failed = False
    for sub in reversed(parts.subsystems):
        if not isinstance(sub, Revertible):
            continue
        if hasattr(sub, "force_revert"):
            sub.force_revert = force
        try:
            result = await sub.revert()
        except NodeAgentError as err:
            print(f"{sub.name}: revert failed: {err}", file=sys.stderr)
            failed = True
            continue
        restored = f"restored {', '.join(result.changed)}" if result.changed else "nothing to restore"
        restarted = f"; restarted {', '.join(result.restarted)}" if result.restarted else ""
        print(f"{sub.name}: {restored}{restarted}")
    return 1 if failed else 0


async def local_status(parts: Parts) -> dict[str, Any]:
    """Status when no agent is running: the inventory and what each subsystem would change."""
    statuses: dict[str, Status] = {}
    plans: dict[str, Plan] = {}
    for sub in parts.subsystems:
        p = await make_plan(sub)
        plans[sub.name] = p
        if p.error:
            statuses[sub.name] = Status(Phase.FAILED, p.error)
        else:
            pending = f"{len(p.steps)} change(s) pending" if p.steps else "in the desired state"
            statuses[sub.name] = Status(Phase.STOPPED, f"agent not running; {pending}")
    return status_document(
        inventory=parts.inventory,
        statuses=statuses,
        plans=plans,
        extra={"simulate": parts.simulated, "root": str(parts.ctx.root.path), "agent_running": False},
    )
