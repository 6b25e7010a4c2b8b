"""The gpuhealth settings from a file and from the environment, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.errors import ConfigError
from nodeagent.settings import load


def test_ignored_xids_from_the_environment() -> None:
    s = load(env={"NODEAGENT_GPUHEALTH__IGNORED_XIDS": "13, 31", "NODEAGENT_GPUHEALTH__TAINT": "true"})
    assert s.gpuhealth.ignored_xids == [13, 31] and s.gpuhealth.taint is True


def test_bad_xid_names_the_variable_and_key() -> None:
    with pytest.raises(ConfigError) as err:
        load(env={"NODEAGENT_GPUHEALTH__IGNORED_XIDS": "13,x"})
    assert "NODEAGENT_GPUHEALTH__IGNORED_XIDS" in str(err.value) and "gpuhealth.ignored_xids[1]" in str(err.value)


def test_bad_window_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nodeagent.toml"
    path.write_text("version = 1\n[gpuhealth]\nxid_window_s = 0\n")
    with pytest.raises(ConfigError) as err:
        load(file=path)
    assert str(path) in str(err.value) and "gpuhealth.xid_window_s" in str(err.value)
