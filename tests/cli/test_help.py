"""`--help` and the small things a new user meets (issue 23 item 25): descriptions, options only where they
are used, a command group alone prints its usage, generate-config's help, revert's and cdi generate's output."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.cli import EXIT_USAGE, main, make_parser
from nodeagent.settings import SimulationSettings

ROOT = Path(__file__).parents[2]


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield " ".join((*path, name)), child
                yield from commands(child, (*path, name))


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_subcommand_has_a_description() -> None:
    found = dict(commands(make_parser()))
    assert {"run", "cdi generate", "sim record", "sim profiles", "mig apply", "mig generate-config"} <= set(found)
    for name, parser in found.items():
        assert parser.description, name
        assert parser.format_help().split("\n\n")[1].strip(), f"{name}: --help starts with no description"


def test_options_are_offered_only_where_they_are_used() -> None:
    found = dict(commands(make_parser()))
    with_listen = {name for name, p in found.items() if "--listen" in options(p)}
    assert with_listen == {"run", "status"}
    assert "--simulate" not in options(found["sim record"]) and "--root" not in options(found["sim record"])
    for name in ("cdi generate", "sim record", "mig apply", "mig assert", "mig export", "mig generate-config"):
        assert "--only" not in options(found[name]), name
    for name in ("run", "plan", "apply", "revert", "status", "cdi generate", "mig apply"):
        assert "--simulate" in options(found[name]), name


@pytest.mark.parametrize(
    ("argv", "subcommands"),
    [
        ([], ["run", "plan", "cdi", "mig"]),
        (["cdi"], ["generate"]),
        (["sim"], ["record", "profiles"]),
        (["mig"], ["apply", "assert", "export", "generate-config"]),
    ],
)
def test_a_command_group_alone_prints_its_usage_and_subcommands(
    argv: list[str], subcommands: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"usage: nodeagent {' '.join(argv)}".rstrip())
    assert "required" not in err
    for name in subcommands:
        assert re.search(rf"^\s+{re.escape(name)}\s", err, re.M), name


def test_generate_config_help_says_what_it_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mig", "generate-config", "--simulate", "h100-80gb-hbm3:1", "--root", str(tmp_path)]) == 0
    names = re.findall(r"^  (\S+):$", capsys.readouterr().out, re.M)
    profiles = sorted(n for n in names if n not in ("all-disabled", "all-enabled", "all-balanced"))
    assert set(names) - set(profiles) == {"all-disabled", "all-enabled", "all-balanced"}
    assert all(n.startswith("all-") and re.match(r"all-\dg\.", n) for n in profiles)
    text = " ".join(dict(commands(make_parser()))["mig generate-config"].format_help().split())
    assert "every layout" not in text
    for kind in ("all-disabled", "all-enabled", "all-<profile>", "all-balanced", "Not every mix"):
        assert kind in text


def test_docs_point_at_a_command_that_lists_the_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        assert "see `nodeagent status --simulate`" not in doc.read_text(), doc
    profile_doc = SimulationSettings.__dataclass_fields__["profile"].metadata["doc"]
    assert "`nodeagent sim profiles`" in profile_doc
    assert "`nodeagent sim profiles`" in (ROOT / "docs/configuration.md").read_text()
    assert main(["sim", "profiles"]) == 0
    assert "h200-141gb-hbm3e" in capsys.readouterr().out


def test_revert_of_nothing_says_nothing_to_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["revert", "--simulate", "--root", str(tmp_path), "--only", "cdi"])
    out = capsys.readouterr().out
    assert "restored nothing" not in out
    assert "cdi: nothing to restore" in out.splitlines()


def test_cdi_generate_says_where_it_wrote_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cdi", "generate", "--simulate", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"wrote {tmp_path}/var/run/cdi/nvidia.yaml (cdi.spec_path ") for line in lines)
    assert (tmp_path / "var/run/cdi/nvidia.yaml").is_file()
    assert main(["cdi", "generate", "--simulate", "--root", str(tmp_path), "--output", "-"]) == 0
    assert "cdiVersion:" in capsys.readouterr().out
