"""``nodeagent mig apply|assert|export|generate-config``: nvidia-mig-parted's commands, flags and environment.

Flags and their ``MIG_PARTED_*`` variables are mig-parted's (a flag wins over its variable):

- ``apply -f FILE -c NAME [--mode-only] [--skip-reset] [-k HOOKS] [--force]``
  (MIG_PARTED_CONFIG_FILE, MIG_PARTED_SELECTED_CONFIG, MIG_PARTED_MODE_CHANGE_ONLY, MIG_PARTED_SKIP_RESET,
  MIG_PARTED_HOOKS_FILE);
- ``assert -f FILE -c NAME [--mode-only | --valid-config]`` (MIG_PARTED_VALID_CONFIG): exit 0 when applied,
  1 when not (or when the GPUs cannot take it); with ``--valid-config``, as mig-parted, only the file is
  checked (valid, and the selected config is in it), without looking at the GPUs;
- ``export [--config-label current] [-o yaml|json]`` (MIG_PARTED_CONFIG_LABEL, MIG_PARTED_OUTPUT_FORMAT);
- ``generate-config [-f OUT] [-o yaml|json]`` (MIG_PARTED_OUTPUT_FILE, MIG_PARTED_OUTPUT_FORMAT).

Exit codes: 0 done / applied; 1 not applied, or a GPU failed or needs a reboot; 2 bad input (the config
file, a config that does not fit the GPUs, a config none of whose entries matches any GPU unless
``mig.no_match = "succeed"``), and then nothing was touched. With ``--simulate`` the GPUs'
MIG state lives in the sandbox (under ``agent.state_dir``), so separate commands see the same GPUs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nodeagent.backends.gpu.protocols import GpuBackend, MigControl
    from nodeagent.backends.hostfs import Root
    from nodeagent.settings import Settings
    from nodeagent.subsystem import PodResourcesConnector

EXIT_OK, EXIT_NOT_APPLIED, EXIT_USAGE = 0, 1, 2
_TRUE = ("1", "true", "yes", "on")


def add_mig_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``mig`` and its subcommands to the top-level subparsers (``common`` adds --simulate, --root...)."""
    mig = sub.add_parser("mig", help="MIG partitioning, compatible with nvidia-mig-parted")
    cmds = mig.add_subparsers(dest="mig_command", required=True, metavar="MIG_COMMAND")
    p = cmds.add_parser(
        "apply",
        help="apply a MIG config (least disruption: only the difference is changed)",
        description="Apply a MIG config (least disruption: only the difference is changed). Refused (exit 1) "
        "while an agent runs on the root: it owns the MIG layout; ask it through the nvidia.com/mig.config "
        "label or its mig.config setting instead.",
    )
    common(p)
    _config_flags(p)
    p.add_argument("-m", "--mode-only", action="store_true", default=None, help="only change MIG modes")
    p.add_argument("-s", "--skip-reset", action="store_true", default=None, help="leave mode changes pending")
    p.add_argument("-k", "--hooks-file", metavar="FILE", help="mig-parted hooks file")
    p.add_argument("--force", action="store_true", help="go on even when processes or pods use a changed GPU")
    p = cmds.add_parser("assert", help="exit 0 when the config is applied, 1 when not")
    common(p)
    _config_flags(p)
    only = p.add_mutually_exclusive_group()
    only.add_argument("-m", "--mode-only", action="store_true", default=None, help="compare MIG modes only")
    only.add_argument(
        "-a",
        "--valid-config",
        action="store_true",
        default=None,
        help="only check that the file is valid and has the config (the GPUs are not looked at)",
    )
    p = cmds.add_parser("export", help="the current MIG layout as a mig-parted config")
    common(p)
    p.add_argument("-l", "--config-label", metavar="NAME", help="name of the config (default current)")
    p.add_argument("-o", "--output-format", choices=["yaml", "json"], help="default yaml")
    p = cmds.add_parser(
        "generate-config",
        help="a mig-parted config as mig-parted generates it: all-disabled, all-enabled, all-<profile>, all-balanced",
        description="A mig-parted config for these GPUs, as mig-parted generates it: all-disabled, all-enabled "
        "(MIG on, no instances), all-<profile> for each MIG profile at its maximum count, and all-balanced. "
        "Not every mix the GPUs allow: write those by hand (`mig assert` says whether these GPUs can take one).",
    )
    common(p)
    p.add_argument("-f", "--output-file", metavar="FILE", help="write here instead of stdout")
    p.add_argument("-o", "--output-format", choices=["yaml", "json"], help="default yaml")


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--config-file", metavar="FILE", help="mig-parted config file ('-' for stdin)")
    p.add_argument("-c", "--selected-config", metavar="NAME", help="config to use from the file")


def _flag(args: argparse.Namespace, name: str, env: Mapping[str, str], var: str, default: Any = None) -> Any:
    value = getattr(args, name, None)
    if value is not None:
        return value
    if var in env:
        raw = env[var]
        return raw.strip().lower() in _TRUE if isinstance(default, bool) else raw
    return default


class GpuAccess(Protocol):
    """What a one-shot ``mig`` command works with, chosen by the composition root (``compose.open_gpus``)."""

    @property
    def root(self) -> Root: ...

    @property
    def gpus(self) -> GpuBackend:
        """Opened; the command closes it."""
        ...

    @property
    def mig_control(self) -> MigControl | None: ...

    @property
    def pod_resources(self) -> PodResourcesConnector:
        """The kubelet's PodResources client for a socket, to name the pods holding a GPU."""
        ...


OpenGpus = Callable[["Settings"], Awaitable[GpuAccess]]
"""Opens the host root, the GPU backend and its MIG control (the composition root's ``open_gpus``)."""


async def run_mig(args: argparse.Namespace, settings: Settings, env: Mapping[str, str], open_gpus: OpenGpus) -> int:
    """Dispatch one ``nodeagent mig`` command. ConfigError propagates (the CLI prints it and exits 2).

    The CLI passes the composition root's ``open_gpus``: this package never chooses simulated or real parts."""
    from nodeagent.mig import config as cfg

    command = args.mig_command
    parsed = None
    if command in ("apply", "assert"):
        path = _flag(args, "config_file", env, "MIG_PARTED_CONFIG_FILE")
        if not path:
            print("nodeagent mig: missing -f/--config-file (or MIG_PARTED_CONFIG_FILE)", file=sys.stderr)
            return EXIT_USAGE
        parsed = (cfg.parse_text(sys.stdin.read(), source="<stdin>") if path == "-" else cfg.load_file(path)).select(
            _flag(args, "selected_config", env, "MIG_PARTED_SELECTED_CONFIG")
        )
        for warning in parsed.warnings:
            print(f"nodeagent mig: warning: {warning}", file=sys.stderr)
    if command == "assert" and _flag(args, "valid_config", env, "MIG_PARTED_VALID_CONFIG", False):
        # As mig-parted: the file is valid and the selected config is in it; the GPUs are not looked at.
        print("Selected MIG configuration is valid")
        return EXIT_OK
    hooks = None
    if command == "apply" and _flag(args, "hooks_file", env, "MIG_PARTED_HOOKS_FILE"):
        from nodeagent.mig.hooks import load_hooks

        hooks = load_hooks(_flag(args, "hooks_file", env, "MIG_PARTED_HOOKS_FILE"))
    from nodeagent.errors import BackendUnavailable

    try:
        access = await open_gpus(settings)
    except BackendUnavailable as err:
        print(f"nodeagent mig: {err}", file=sys.stderr)
        return EXIT_USAGE
    gpus = access.gpus
    try:
        if command == "apply":
            assert parsed is not None
            return await _apply(args, env, parsed, access=access, settings=settings, hooks=hooks)
        if command == "assert":
            assert parsed is not None
            return await _assert(args, env, parsed, gpus)
        if command == "export":
            return await _export(args, env, gpus)
        return await _generate(args, env, gpus)
    finally:
        await gpus.close()


async def _states(gpus: GpuBackend) -> tuple[Any, list[Any]]:
    from nodeagent.mig.observe import mig_layouts

    inventory = await gpus.inventory()
    return inventory, mig_layouts(inventory)


async def _apply(
    args: argparse.Namespace,
    env: Mapping[str, str],
    config: Any,
    *,
    access: GpuAccess,
    settings: Settings,
    hooks: Any,
) -> int:
    from nodeagent.mig import service
    from nodeagent.mig.hooks import Hooks
    from nodeagent.mig.options import ApplyOptions

    gpus, control = access.gpus, access.mig_control
    if control is None:
        print(f"nodeagent mig: the {gpus.kind} GPU backend cannot change MIG layouts", file=sys.stderr)
        return EXIT_NOT_APPLIED
    mode_only = bool(_flag(args, "mode_only", env, "MIG_PARTED_MODE_CHANGE_ONLY", False))
    skip_reset = bool(_flag(args, "skip_reset", env, "MIG_PARTED_SKIP_RESET", False))
    inventory, states = await _states(gpus)
    config.validate([s.gpu for s in states])
    hook_env = {
        "MIG_PARTED_CONFIG_FILE": str(_flag(args, "config_file", env, "MIG_PARTED_CONFIG_FILE", "")),
        "MIG_PARTED_SELECTED_CONFIG": config.name,
        "MIG_PARTED_HOOKS_FILE": str(_flag(args, "hooks_file", env, "MIG_PARTED_HOOKS_FILE", "")),
        "MIG_PARTED_SKIP_RESET": str(skip_reset).lower(),
        "MIG_PARTED_MODE_CHANGE_ONLY": str(mode_only).lower(),
    }
    socket = settings.kubelet.pod_resources_socket
    pods = access.pod_resources(socket) if socket else None
    options = ApplyOptions(
        mode_only=mode_only,
        skip_reset=skip_reset,
        force=bool(args.force),
        hooks=hooks or Hooks(),
        hook_env=hook_env,
        pods=pods,
    )
    try:
        outcome = await service.apply_config(
            config, control, root=access.root, inventory=inventory, options=options, no_match=settings.mig.no_match
        )
    finally:
        if pods is not None:
            await pods.close()
    for line in outcome.lines():
        print(line)
    if outcome.ok:
        print("MIG configuration applied successfully")
        return EXIT_OK
    for reason in outcome.reasons():
        print(f"nodeagent mig: {reason}", file=sys.stderr)
    return EXIT_NOT_APPLIED


async def _assert(args: argparse.Namespace, env: Mapping[str, str], config: Any, gpus: GpuBackend) -> int:
    from nodeagent.errors import ConfigError
    from nodeagent.mig.planner import applied, plan_node

    _, states = await _states(gpus)
    # The hardware check (mig-parted's assert only compares): a config these GPUs cannot take is never applied.
    try:
        config.validate([s.gpu for s in states])
    except ConfigError as err:
        print(f"nodeagent mig: {err}", file=sys.stderr)
        print("Assertion failure: selected configuration cannot be applied to these GPUs", file=sys.stderr)
        return EXIT_NOT_APPLIED
    errors = plan_node(config, states).errors
    for e in errors:
        print(f"nodeagent mig: {e}", file=sys.stderr)
    if errors:
        print("Assertion failure: selected configuration cannot be applied to these GPUs", file=sys.stderr)
        return EXIT_NOT_APPLIED
    mode_only = bool(_flag(args, "mode_only", env, "MIG_PARTED_MODE_CHANGE_ONLY", False))
    ok, differences = applied(config, states, mode_only=mode_only)
    if ok:
        print(
            "Selected MIG mode settings currently applied"
            if mode_only
            else "Selected MIG configuration currently applied"
        )
        return EXIT_OK
    for d in differences:
        print(f"nodeagent mig: {d}", file=sys.stderr)
    print("Assertion failure: selected configuration not currently applied", file=sys.stderr)
    return EXIT_NOT_APPLIED


async def _export(args: argparse.Namespace, env: Mapping[str, str], gpus: GpuBackend) -> int:
    from nodeagent.mig.generate import export, to_text

    _, states = await _states(gpus)
    label = _flag(args, "config_label", env, "MIG_PARTED_CONFIG_LABEL", "current")
    fmt = _flag(args, "output_format", env, "MIG_PARTED_OUTPUT_FORMAT", "yaml")
    sys.stdout.write(to_text(export(states, label), fmt))
    return EXIT_OK


async def _generate(args: argparse.Namespace, env: Mapping[str, str], gpus: GpuBackend) -> int:
    from nodeagent.backends.hostfs import atomic_write
    from nodeagent.mig.generate import generate, to_text

    _, states = await _states(gpus)
    fmt = _flag(args, "output_format", env, "MIG_PARTED_OUTPUT_FORMAT", "yaml")
    text = to_text(generate([s.gpu for s in states]), fmt)
    out = _flag(args, "output_file", env, "MIG_PARTED_OUTPUT_FILE", "")
    if out:
        atomic_write(Path(out).absolute(), text.encode())
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK
