"""`nodeagent mig apply` beside a running agent is refused, naming its pid (issue 23 item 17).

The running agent owns the MIG layout (it applies `mig.config` and puts its own back), so a one-shot
`mig apply` on the same root takes the agent lock like `apply` and `revert`; the read-only MIG commands don't.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.agent_lock import acquire
from nodeagent.backends.hostfs import Root
from nodeagent.cli import main


def mig(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["mig", argv[0], "--simulate", "h100-80gb-hbm3:2", "--root", str(root), *argv[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_mig_apply_is_refused_while_an_agent_holds_the_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    code, generated, _ = mig(capsys, root, "generate-config")
    assert code == 0
    gen = tmp_path / "gen.yaml"
    gen.write_text(generated)
    agent = acquire(Root(root), "/var/lib/nodeagent", "run")  # what `nodeagent run` holds
    try:
        code, out, err = mig(capsys, root, "apply", "-f", str(gen), "-c", "all-balanced")
        assert code == 1
        assert "applied successfully" not in out
        assert f"pid {os.getpid()} (run)" in err
        assert "`mig apply` refused" in err and "owns the MIG layout" in err and "nvidia.com/mig.config" in err
        # nothing changed; the read-only commands still answer beside the agent
        assert mig(capsys, root, "assert", "-f", str(gen), "-c", "all-disabled")[0] == 0
        assert mig(capsys, root, "export")[0] == 0
    finally:
        agent.release()
    code, out, _ = mig(capsys, root, "apply", "-f", str(gen), "-c", "all-balanced")
    assert code == 0 and "applied successfully" in out
