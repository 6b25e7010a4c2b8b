"""A YAML file given to --config is named as YAML, with where a mig-parted file goes (issue 23 item 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.cli import EXIT_USAGE, main

MIG_PARTED = "version: v1\nmig-configs:\n  all-disabled:\n    - devices: all\n      mig-enabled: false\n"


def test_mig_parted_yaml_given_as_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = tmp_path / "gen.yaml"
    gen.write_text(MIG_PARTED)
    argv = ["mig", "apply", "--simulate", "--root", str(tmp_path / "sim"), "--config", str(gen), "-c", "all-disabled"]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"nodeagent: bad settings: {gen}: a YAML file, not TOML: it is a mig-parted config; ")
    assert f"give it with -f/--config-file (`nodeagent mig apply -f {gen} -c NAME`)" in err
    assert "malformed TOML" not in err


def test_other_yaml_given_as_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "nodeagent.yml"
    settings.write_text("agent:\n  listen: 127.0.0.1:9500\n")
    assert main(["plan", "--simulate", "--root", str(tmp_path / "sim"), "--config", str(settings)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{settings}: a YAML file, not TOML: --config takes the agent's settings, a TOML file" in err
    assert "a mig-parted config goes to `nodeagent mig apply -f FILE`" in err


def test_broken_toml_is_still_called_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "nodeagent.toml"
    settings.write_text("version = 1\n[agent\n")
    assert main(["plan", "--simulate", "--root", str(tmp_path / "sim"), "--config", str(settings)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{settings}: malformed TOML: " in err and "YAML" not in err
