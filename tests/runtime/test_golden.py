"""Golden cases: real input files in real layouts → the files the planner and editor produce.

Each ``golden/<case>/`` holds ``case.toml`` (runtime settings, and what the plan must show), ``input/``
(host paths under a sandbox root) and ``expected/`` (the bytes each changed file must have; a file that
the plan must remove is ``expected/<path>.removed``). Every other input file must stay byte for byte.
The real planner and editor run over each case: observe → plan → apply through the Root. After apply a
second plan must be empty (idempotent) unless the case expects an error.

``NODEAGENT_GOLDEN_UPDATE=1`` rewrites ``expected/`` from the current output; review it with git diff.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NODEAGENT_GOLDEN_UPDATE") == "1"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "case.toml").is_file())


def _files(base: Path) -> dict[str, bytes]:
    return {"/" + p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", CASES)
async def test_golden(node_factory: Any, name: str) -> None:
    case_dir = GOLDEN / name
    case = tomllib.loads((case_dir / "case.toml").read_text())
    inputs = _files(case_dir / "input")
    node = node_factory(inputs, **case.get("settings", {}))
    plan = node.sub.plan(await node.sub.observe())
    expect = case.get("expect", {})
    if "error" in expect:
        assert expect["error"] in plan.error, plan.error
        assert not plan.steps
        return
    assert not plan.error, plan.error
    assert [s.action for s in plan.steps] == expect["steps"]
    for needle in expect.get("warnings", []):
        assert any(needle in w for w in plan.warnings), plan.warnings
    if not expect.get("warnings"):
        assert not plan.warnings, plan.warnings
    await node.sub.apply(plan)
    after = {path: node.read(path) for path in inputs} | {s.target: node.read(s.target) for s in plan.steps}
    expected_dir = case_dir / "expected"
    if UPDATE:
        for path, data in after.items():
            if data != inputs.get(path):
                out = expected_dir / (path.lstrip("/") + (".removed" if data is None else ""))
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data or b"")
    expected = _files(expected_dir) if expected_dir.is_dir() else {}
    for path, data in after.items():
        if path + ".removed" in expected:
            assert data is None, f"{path} should have been removed"
        elif path in expected:
            assert data == expected[path], f"{path} differs from golden/{name}/expected{path}"
        else:
            assert data == inputs.get(path), f"{path} changed but golden/{name} expects it untouched"
    again = node.sub.plan(await node.sub.observe())
    assert again.empty, [s.summary for s in again.steps]
