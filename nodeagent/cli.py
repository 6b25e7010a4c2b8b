"""Command line: parse, load settings, pick backends, dispatch. No logic of its own.

Exit codes: 0 ok, 1 failure at run time (``run``: also its HTTP address taken; a one-shot command refused
beside a running agent), 2 bad usage or bad settings (or no driver without --simulate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent import __version__
from nodeagent import settings as settings_mod
from nodeagent.errors import BackendUnavailable, ConfigError, NodeAgentError

if TYPE_CHECKING:
    pass

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

DEFAULT_SIMULATION = "h100-80gb-hbm3:8"


def _common(
    parser: argparse.ArgumentParser, *, root: bool = True, simulate: bool = True, listen: str = "", only: bool = True
) -> None:
    """The shared options, only where the command uses them (``listen``: the help of --listen, when it has one)."""
    parser.add_argument(
        "--config", metavar="FILE", help="settings file (TOML, starts with `version = 1`; not a mig-parted YAML)"
    )
    if root:
        parser.add_argument("--root", metavar="DIR", help="host root (default /; in simulation a sandbox)")
    if simulate:
        parser.add_argument(
            "--simulate",
            nargs="?",
            const="",  # bare --simulate: profile and count from the settings (default h100-80gb-hbm3:8)
            metavar="PROFILE[:COUNT]",
            help=f"simulated GPUs and a sandbox host (default {DEFAULT_SIMULATION}); PROFILE is a built-in "
            "(`nodeagent sim profiles`) or a JSON profile",
        )
    if listen:
        parser.add_argument("--listen", metavar="HOST:PORT", help=listen)
    if only:
        parser.add_argument("--only", metavar="NAME", action="append", help="restrict to this subsystem (repeatable)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="log format")


def _command(sub: Any, name: str, help: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with what it does."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description or help)
    return parser


def _group(sub: Any, name: str, help: str, dest: str) -> Any:
    """A command with subcommands of its own; given alone, it prints its usage and subcommands (exit 2)."""
    parser = _command(sub, name, help)
    parser.set_defaults(_group=(parser, dest))
    return parser.add_subparsers(dest=dest, metavar=dest.upper())


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description="GPU node agent.")
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(_group=(parser, "command"))
    p = _command(
        sub,
        "run",
        "run the agent (long-lived)",
        "Run the agent: supervise the enabled subsystems and serve /metrics, /healthz, /readyz and /status "
        "until SIGTERM; SIGHUP reloads the settings. Exit 1 when the HTTP address is taken.",
    )
    _common(p, listen="HTTP listener (default 127.0.0.1:9400; also NODEAGENT_AGENT__LISTEN)")
    p = _command(sub, "plan", "print every enabled subsystem's plan; change nothing")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = _command(
        sub,
        "apply",
        "apply every enabled subsystem's plan once and exit",
        "Apply every enabled subsystem's plan once and exit; refused (exit 1) while an agent runs on the root.",
    )
    _common(p)
    p = _command(
        sub,
        "revert",
        "restore every file the agent changed to its original bytes",
        "Restore every file the agent changed to its original bytes; refused (exit 1) while an agent runs on "
        "the root (it would apply its changes again).",
    )
    _common(p)
    p.add_argument("--force", action="store_true", help="restore even files someone else changed since")
    p = _command(
        sub,
        "status",
        "GPU inventory and each subsystem's phase and reason",
        "GPU inventory and each subsystem's phase and reason: the running agent's (asked on --listen; with "
        "--simulate, a simulated agent on the same sandbox), else what the subsystems would change.",
    )
    _common(p, listen="where to ask the running agent (default 127.0.0.1:9400)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    cdi = _group(sub, "cdi", "CDI spec commands", "cdi_command")
    p = _command(
        cdi,
        "generate",
        "generate the CDI spec",
        "Generate the CDI spec once: to cdi.spec_path under the root (stdout says where), to --output PATH, "
        "or to stdout with --output -.",
    )
    _common(p, only=False)
    p.add_argument("--output", metavar="PATH", help="write here instead of cdi.spec_path ('-' for stdout)")
    sim = _group(sub, "sim", "simulation tools", "sim_command")
    p = _command(
        sim,
        "record",
        "capture this node's GPUs through NVML into a simulation profile",
        "Capture this node's GPU model through NVML into a JSON profile for --simulate FILE; needs the NVIDIA "
        "driver (exit 2 without it).",
    )
    _common(p, root=False, simulate=False, only=False)
    p.add_argument("--output", metavar="FILE", required=True, help="profile JSON to write")
    _command(sim, "profiles", "list the built-in simulation profiles (for --simulate PROFILE[:COUNT])")
    from nodeagent.mig.commands import add_mig_parser

    add_mig_parser(sub, lambda p: _common(p, only=False))
    _finish(parser)
    return parser


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every subcommand (also those ``add_mig_parser`` adds) gets a description; a command with subcommands
    given alone prints its usage instead of argparse's "required: ..." (see ``_group``)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        action.required = False
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, child in action.choices.items():
            if child.description is None:
                child.description = helps.get(name)
            if child.get_default("_group") is None and any(
                isinstance(a, argparse._SubParsersAction) for a in child._actions
            ):
                dest = next(a.dest for a in child._actions if isinstance(a, argparse._SubParsersAction))
                child.set_defaults(_group=(child, dest))
            _finish(child)


def _incomplete(args: argparse.Namespace) -> argparse.ArgumentParser | None:
    """The parser of a command given without its subcommand (``nodeagent cdi``), or None."""
    group = getattr(args, "_group", None)
    if group is None:
        return None
    parser, dest = group
    return parser if getattr(args, dest, None) is None else None


def cli_overrides(args: argparse.Namespace) -> tuple[dict[tuple[str, str], Any], dict[tuple[str, str], str]]:
    """Map flags onto settings keys (CLI has the highest precedence)."""
    values: dict[tuple[str, str], Any] = {}
    names: dict[tuple[str, str], str] = {}

    def put(section: str, key: str, value: Any, flag: str) -> None:
        values[(section, key)] = value
        names[(section, key)] = flag

    root, listen, only = getattr(args, "root", None), getattr(args, "listen", None), getattr(args, "only", None)
    log_format, simulate = getattr(args, "log_format", None), getattr(args, "simulate", None)
    if root:
        if simulate is not None and os.path.realpath(root) == "/":
            raise ConfigError("simulation never runs on the real root; give a sandbox directory", source="--root")
        put("agent", "root", str(Path(root).absolute()), "--root")
    if listen:
        put("agent", "listen", listen, "--listen")
    if only:
        put("agent", "only", list(only), "--only")
    if log_format:
        put("agent", "log_format", log_format, "--log-format")
    if simulate is not None:
        put("simulation", "enabled", True, "--simulate")
        profile, _, count = simulate.rpartition(":") if ":" in simulate else (simulate, "", "")
        if profile:
            put("simulation", "profile", profile, "--simulate")
        if count:
            try:
                put("simulation", "count", int(count), "--simulate")
            except ValueError:
                from nodeagent.backends.gpu.sim.profiles import count_problem

                raise ConfigError(count_problem(count), source="--simulate", key="simulation.count") from None
    return values, names


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> settings_mod.Settings:
    values, names = cli_overrides(args)
    config = getattr(args, "config", None)
    try:
        settings = settings_mod.load(file=config, env=env, cli=values, cli_names=names)
    except ConfigError as err:
        if config and err.source == str(config) and err.bare_message.startswith("malformed TOML"):
            yaml_problem = _yaml_given_as_settings(Path(config))
            if yaml_problem:
                raise ConfigError(yaml_problem, source=err.source) from None
        raise
    from nodeagent.runtime.ownership import check_owned_paths

    check_owned_paths(settings)  # two subsystems may never own one path
    return settings


def _yaml_given_as_settings(path: Path) -> str:
    """When the settings file that is not TOML is a YAML mapping: what it is and where it goes; else ''."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    if not isinstance(doc, dict):
        return ""
    settings_hint = "--config takes the agent's settings, a TOML file (`version = 1` first; docs/configuration.md)"
    if "mig-configs" in doc:
        return (
            f"a YAML file, not TOML: it is a mig-parted config; give it with -f/--config-file "
            f"(`nodeagent mig apply -f {path} -c NAME`); {settings_hint}"
        )
    return f"a YAML file, not TOML: {settings_hint}; a mig-parted config goes to `nodeagent mig apply -f FILE`"


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    incomplete = _incomplete(args)
    if incomplete is not None:
        incomplete.print_help(sys.stderr)
        return EXIT_USAGE
    env = dict(os.environ)
    try:
        settings = load_settings(args, env)
    except ConfigError as err:
        print(f"nodeagent: bad settings: {err}", file=sys.stderr)
        return EXIT_USAGE
    from nodeagent import logs

    logs.configure(settings.agent.log_format, settings.agent.log_level, stream=sys.stderr if _quiet(args) else None)
    try:
        return asyncio.run(_dispatch(args, settings, env))
    except ConfigError as err:
        print(f"nodeagent: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nodeagent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet(args: argparse.Namespace) -> bool:
    """One-shot commands keep stdout for their output; logs go to stderr."""
    return bool(args.command != "run")


async def _dispatch(args: argparse.Namespace, settings: settings_mod.Settings, env: dict[str, str]) -> int:
    if args.command == "status":
        remote = _running_agent_status(settings)
        if remote is not None:
            return _print_status(remote, as_json=args.json)
    if args.command == "sim":
        return _sim_profiles() if args.sim_command == "profiles" else await _sim_record(args, settings)
    if args.command == "mig":
        return await _mig(args, settings, env)
    from nodeagent.compose import compose

    try:
        parts = await compose(settings, env, only=getattr(args, "only", None) or [])
    except BackendUnavailable as err:
        print(f"nodeagent: {err}", file=sys.stderr)
        if not settings.simulation.enabled:
            print("nodeagent: hint: no NVIDIA driver here? try `nodeagent run --simulate`", file=sys.stderr)
        return EXIT_USAGE
    from nodeagent import commands
    from nodeagent.agent_lock import acquire

    try:  # one agent per root: run, apply and revert hold <state_dir>/agent.lock
        lock = acquire(parts.ctx.root, settings.agent.state_dir, args.command) if args.command in _LOCKED else None
    except NodeAgentError as err:
        await parts.ctx.gpus.close()
        print(f"nodeagent: {err}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        if args.command == "run":
            from nodeagent.app import Agent

            agent = Agent(parts, reload_settings=lambda: load_settings(args, dict(os.environ)))
            code = await agent.run()
            # the process, not the Agent (tests run Agents in-process): a later SIGTERM must not turn the
            # exit code into 143, and a thread stuck in a hung read must not keep the interpreter alive
            from nodeagent.aio import hard_exit_timer

            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
            hard_exit_timer(5.0, code=code)
            return code
        if args.command == "plan":
            return await commands.plan(parts, as_json=args.json, color=sys.stdout.isatty())
        if args.command == "apply":
            return await commands.apply(parts)
        if args.command == "revert":
            return await commands.revert(parts, force=args.force)
        if args.command == "status":
            doc = await commands.local_status(parts)
            return _print_status(doc, as_json=args.json)
        if args.command == "cdi":
            from nodeagent.cdi.command import generate_command

            return await generate_command(parts.ctx, args.output)
    finally:
        if args.command != "run":
            await parts.ctx.node.close()
            await parts.ctx.gpus.close()
        if lock is not None:
            lock.release()
    return EXIT_USAGE


_LOCKED = ("run", "apply", "revert")


async def _mig(args: argparse.Namespace, settings: settings_mod.Settings, env: dict[str, str]) -> int:
    """``nodeagent mig ...``; ``mig apply`` changes the GPUs, so it holds the root's agent lock like ``apply``:
    beside a running agent (which owns the MIG layout) it is refused, naming the agent's pid."""
    from nodeagent.agent_lock import acquire
    from nodeagent.compose import choose_root, open_gpus
    from nodeagent.mig.commands import run_mig

    if args.mig_command != "apply":
        return await run_mig(args, settings, env, open_gpus)
    try:
        lock = acquire(choose_root(settings), settings.agent.state_dir, "mig apply")
    except NodeAgentError as err:
        print(f"nodeagent: {err}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return await run_mig(args, settings, env, open_gpus)
    finally:
        lock.release()


_SIMULATE_ADVICE = re.compile(
    r"[;,] (?:or use --simulate to run without a GPU|to try the agent without a GPU, use --simulate)"
)
"""The NVML backend's advice to simulate, where the command itself cannot (``sim record``)."""


async def _sim_record(args: argparse.Namespace, settings: settings_mod.Settings) -> int:
    """Exit 2 when there is no driver or no GPU to record (as every command without a driver), 1 on other errors."""
    from nodeagent.backends.gpu.record import record_profile

    try:
        out = record_profile(driver_root=settings.driver.root or None, out=Path(args.output))
    except BackendUnavailable as err:
        reason = _SIMULATE_ADVICE.sub("", str(err))  # recording needs a real GPU: no circle back to --simulate
        print(f"nodeagent sim record: {reason}", file=sys.stderr)
        print(
            "nodeagent sim record: hint: it reads a real GPU through NVML, so run it on the GPU node (with "
            "driver.root, or NODEAGENT_DRIVER__ROOT, when the driver is elsewhere); without a GPU, simulate a "
            "built-in profile instead (`nodeagent sim profiles` lists them; `nodeagent run --simulate PROFILE`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except NodeAgentError as err:
        print(f"nodeagent sim record: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {out}")
    return EXIT_OK


def _running_agent_status(settings: settings_mod.Settings) -> dict[str, Any] | None:
    """The /status of the agent on ``agent.listen`` when it runs on the root this command would use.

    Without simulation any agent answering there is the node's. With it, only a simulated agent on the same
    sandbox is (another one's status would describe other GPUs); otherwise the local status is shown, with a note.
    """
    remote = _remote_status(settings.agent.listen)
    if remote is None or not settings.simulation.enabled:
        return remote
    from nodeagent.compose import choose_root

    here = os.path.realpath(choose_root(settings).path)
    there = os.path.realpath(str(remote.get("root", "")))
    if remote.get("simulate") and here == there:
        return remote
    kind = "a simulated" if remote.get("simulate") else "a real"
    print(
        f"nodeagent: the agent on {settings.agent.listen} is {kind} one on root {remote.get('root', '?')}, "
        f"not this sandbox ({here}); showing this sandbox's status instead",
        file=sys.stderr,
    )
    return None


def _sim_profiles() -> int:
    from nodeagent.backends.gpu.sim.profiles import DEFAULT_PROFILE, builtin_names, load_profile

    for key in builtin_names():
        p = load_profile(key)
        mig = f"{len(p.mig_profiles)} MIG profiles" if p.mig_capable else "no MIG"
        default = "  (the default)" if key == DEFAULT_PROFILE else ""
        print(f"{key:<18} {p.name}, {p.memory_total_mib} MiB, {mig}, {p.default_count} GPUs by default{default}")
    print("or a JSON profile written by `nodeagent sim record --output FILE` (--simulate FILE[:COUNT])")
    return EXIT_OK


def _remote_status(listen: str) -> dict[str, Any] | None:
    """The running agent's /status, or None when no agent answers on ``listen``."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=1.0) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _print_status(doc: Mapping[str, Any], *, as_json: bool) -> int:
    from nodeagent.health import render_status

    if as_json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render_status(doc), end="")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
