"""`nodeagent status` asks the running agent, with and without --simulate (issue 23 item 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.cli import main
from tests.cli.fake_agent import agent_doc, fake_agent


def test_status_simulate_asks_the_simulated_agent_on_the_same_sandbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "sim"
    with fake_agent(agent_doc(str(root.absolute()), simulate=True)) as listen:
        code = main(["status", "--simulate", "--root", str(root), "--listen", listen, "--only", "cdi"])
    out = capsys.readouterr().out
    assert code == 0
    assert "cdi      running: spec up to date (live)" in out
    assert "agent not running" not in out


def test_status_simulate_beside_an_agent_on_another_root_shows_this_sandbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "sim"
    with fake_agent(agent_doc(str(tmp_path / "elsewhere"), simulate=True)) as listen:
        code = main(["status", "--simulate", "--root", str(root), "--listen", listen, "--only", "cdi"])
    captured = capsys.readouterr()
    assert code == 0
    assert "agent not running" in captured.out
    assert "live" not in captured.out
    assert f"not this sandbox ({root})" in captured.err


def test_plain_status_asks_the_running_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_agent(agent_doc("/", simulate=False)) as listen:
        code = main(["status", "--listen", listen])
    assert code == 0
    assert "spec up to date (live)" in capsys.readouterr().out
