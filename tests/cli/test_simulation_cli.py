"""The simulation commands for a new user (issue 23 item 23): `sim record` without a driver, profile names,
the README's profile list, count errors, malformed JSON profiles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from nodeagent.backends.gpu.nvml.library import unavailable_reason
from nodeagent.backends.gpu.sim.profiles import builtin_names, load_profile, profile_to_json
from nodeagent.cli import _SIMULATE_ADVICE, EXIT_USAGE, main

README = Path(__file__).parents[2] / "README.md"


def test_sim_record_without_a_driver_exits_2_with_a_hint_that_does_not_circle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODEAGENT_DRIVER__ROOT", str(tmp_path / "no-driver"))
    (tmp_path / "no-driver").mkdir()
    assert main(["sim", "record", "--output", str(tmp_path / "p.json")]) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeagent sim record: NVIDIA driver not found: no libnvidia-ml.so.1 under the driver root")
    assert "use --simulate" not in err  # recording cannot be simulated
    assert "run it on the GPU node" in err and "`nodeagent sim profiles` lists them" in err
    assert not (tmp_path / "p.json").exists()


def test_the_backends_simulate_advice_is_what_sim_record_leaves_out() -> None:
    nv = SimpleNamespace(
        **{name: i for i, name in enumerate(n for n in dir(__import__("pynvml")) if n.startswith("NVML_ERROR_"))}
    )
    reason = unavailable_reason(nv, SimpleNamespace(value=nv.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert "--simulate" in reason
    assert "--simulate" not in _SIMULATE_ADVICE.sub("", reason)


def test_sim_profiles_lists_every_built_in(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "profiles"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert listed == builtin_names()


@pytest.mark.parametrize(
    ("spec", "suggestion"),
    [
        ("a100-40gb", "did you mean 'a100-sxm4-40gb'?"),
        ("a100-80gb", "did you mean 'a100-sxm4-80gb'?"),
        ("h200", "did you mean 'h200-141gb-hbm3e'?"),
        ("a100", "did you mean 'a100-sxm4-40gb' or 'a100-sxm4-80gb'?"),
        ("t4-16gb", "did you mean 't4'?"),
    ],
)
def test_unknown_profile_suggests_the_closest_built_in(
    spec: str, suggestion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--simulate", spec, "--root", str(tmp_path)]) == EXIT_USAGE
    assert f"unknown simulation profile {spec!r}; {suggestion}" in capsys.readouterr().err


def test_readme_lists_every_built_in_profile() -> None:
    text = README.read_text()
    match = re.search(r"Profiles: (.*?), or a JSON profile", text, re.S)
    assert match, "README: the sentence listing the simulation profiles"
    assert sorted(re.findall(r"`([a-z0-9-]+)`", match.group(1))) == builtin_names()


@pytest.mark.parametrize(
    ("argv", "env", "value"),
    [
        (["--simulate", "h100-80gb-hbm3:x"], {}, "'x'"),
        (["--simulate", "h100-80gb-hbm3:0"], {}, "0"),
        (["--simulate", "h100-80gb-hbm3:100"], {}, "100"),
        (["--simulate", "t4:-1"], {}, "-1"),
        (["--simulate"], {"NODEAGENT_SIMULATION__COUNT": "0"}, "0"),
        (["--simulate"], {"NODEAGENT_SIMULATION__COUNT": "65"}, "65"),
    ],
)
def test_count_errors_are_worded_one_way(
    argv: list[str],
    env: dict[str, str],
    value: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, v in env.items():
        monkeypatch.setenv(name, v)
    assert main(["plan", *argv, "--root", str(tmp_path)]) == EXIT_USAGE
    assert re.search(rf"simulation\.count: {re.escape(value)} must be between 1 and 64\n$", capsys.readouterr().err)


def test_a_profiles_own_count_is_worded_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = profile_to_json(load_profile("t4"))
    doc["count"] = 0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert main(["plan", "--simulate", str(path), "--root", str(tmp_path / "sim")]) == EXIT_USAGE
    assert capsys.readouterr().err == f"nodeagent: {path}: count: 0 must be between 1 and 64\n"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"gpu": {}}, "format: missing: a JSON object without a format key is not a nodeagent GPU profile"),
        ([1, 2], "a JSON list is not a nodeagent GPU profile"),
        ("drop gpu.name", "gpu.name: missing (a required key)"),
    ],
)
def test_a_malformed_json_profile_names_the_file_and_the_problem(
    doc: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if doc == "drop gpu.name":
        full = profile_to_json(load_profile("t4"))
        del full["gpu"]["name"]
        doc = full
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert main(["plan", "--simulate", str(path), "--root", str(tmp_path / "sim")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"nodeagent: {path}: ") and message in err
    if "format" in message or "list" in message:
        assert '"format": "nodeagent.gpu-profile/v1"' in err and "nodeagent sim record" in err
