"""``nodeagent cdi generate [--output PATH]``: generate the spec once, without the daemon.

Without ``--output`` the spec goes to ``cdi.spec_path`` under the host root (the sandbox in simulation),
atomically and only when it changed, and stdout says where (the path on this machine) and whether it changed.
``--output -`` prints it; any other path is written as given, in JSON when the name ends in .json, else YAML.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import atomic_write
from nodeagent.cdi import spec as cdispec
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.errors import NodeAgentError
from nodeagent.subsystem import Context


async def generate_command(ctx: Context, output: str | None) -> int:
    sub = CdiSubsystem(ctx)
    try:
        observed = await sub.observe()
    except NodeAgentError as err:
        print(f"nodeagent cdi generate: {err}", file=sys.stderr)
        return 1
    plan, spec = sub.plan(observed), sub.spec_for(observed)
    if plan.error or spec is None:
        print(f"nodeagent cdi generate: {plan.error or 'nothing generated'}", file=sys.stderr)
        return 1
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    what = f"{len(spec['devices'])} devices, cdiVersion {spec['cdiVersion']}"
    if output == "-":
        sys.stdout.write(cdispec.render(spec, "yaml").decode())
        return 0
    try:
        if output:
            data = cdispec.render(spec, cdispec.format_for(output))
            await run_blocking(atomic_write, Path(output), data, mode=0o644)
            print(f"wrote {output}: {what}")
            return 0
        result = await sub.apply(plan)
    except (NodeAgentError, OSError) as err:
        print(f"nodeagent cdi generate: cannot write the spec: {err}", file=sys.stderr)
        return 1
    path = ctx.settings.cdi.spec_path
    here = path if ctx.root.path == Path("/") else f"{ctx.root.path / path.lstrip('/')} (cdi.spec_path {path})"
    print(f"{'wrote' if result.changed else 'unchanged'} {here}: {what}; `--output -` prints it")
    return 0
