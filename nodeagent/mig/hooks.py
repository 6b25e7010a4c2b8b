"""mig-parted's hooks file (``-k hooks.yaml``): programs run around a MIG change, for sites that stop their
own GPU services first.

::

    version: v1
    hooks:
      apply-start:      [{command: /bin/bash, args: [-c, "..."], envs: {K: V}, workdir: /etc/...}]
      pre-apply-mode:   [...]   # before any MIG mode change
      pre-apply-config: [...]   # before GPU instances are destroyed or created
      apply-exit:       [...]   # always, at the end

As mig-parted: each hook gets its own ``envs`` plus the ``MIG_PARTED_*`` values of the apply (and nothing
else of the environment); hooks of one name run in order and the first failure stops the apply (apply-exit
still runs). A hook that runs longer than its timeout is killed.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeagent.backends import procs
from nodeagent.errors import ConfigError, NodeAgentError
from nodeagent.mig.config import read_user_file

HOOK_NAMES = ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")
_HOOK_KEYS = ("command", "args", "envs", "workdir")


class HookFailed(NodeAgentError):
    """A hook exited non-zero, timed out or could not be started."""


@dataclass(frozen=True)
class Hook:
    command: str
    args: tuple[str, ...] = ()
    envs: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""


@dataclass(frozen=True)
class Hooks:
    hooks: Mapping[str, tuple[Hook, ...]] = field(default_factory=dict)
    timeout_s: float = 300.0

    async def run(self, name: str, envs: Mapping[str, str]) -> None:
        """Run the hooks called ``name`` in order; HookFailed names the first that failed."""
        for i, hook in enumerate(self.hooks.get(name, ())):
            program = hook.command if "/" in hook.command else (shutil.which(hook.command) or hook.command)
            env = {**dict(hook.envs), **dict(envs)}
            try:
                done = await procs.run(
                    [program, *hook.args], timeout_s=self.timeout_s, env=env, cwd=hook.workdir or None
                )
            except NodeAgentError as err:
                raise HookFailed(f"{name} hook {i} ({hook.command}): {err}") from err
            if not done.ok:
                raise HookFailed(f"{name} hook {i}: {done.describe_failure()}")


def load_hooks(path: str | Path) -> Hooks:
    return parse_hooks(read_user_file(path, "hooks file"), source=str(path))


def parse_hooks(text: str, *, source: str) -> Hooks:
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(
            f"malformed YAML: {getattr(err, 'problem', err)}", source=source, line=mark.line + 1 if mark else None
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError("expected a mapping with `version: v1` and `hooks`", source=source)
    if doc.get("version") != "v1":
        raise ConfigError(f"unknown version {doc.get('version')!r}; expected 'v1'", source=source, key="version")
    for key in doc:
        if key not in ("version", "hooks"):
            raise ConfigError("unknown key (valid: version, hooks)", source=source, key=str(key))
    raw = doc.get("hooks") or {}
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping of hook names to lists", source=source, key="hooks")
    out: dict[str, tuple[Hook, ...]] = {}
    for name, entries in raw.items():
        where = f"hooks.{name}"
        if name not in HOOK_NAMES:
            raise ConfigError(f"unknown hook (valid: {', '.join(HOOK_NAMES)})", source=source, key=where)
        if not isinstance(entries, list):
            raise ConfigError("expected a list of hooks", source=source, key=where)
        hooks = []
        for i, e in enumerate(entries):
            at = f"{where}[{i}]"
            if not isinstance(e, dict):
                raise ConfigError("expected a mapping with command, args, envs, workdir", source=source, key=at)
            for key in e:
                if key not in _HOOK_KEYS:
                    raise ConfigError(f"unknown key (valid: {', '.join(_HOOK_KEYS)})", source=source, key=f"{at}.{key}")
            command = e.get("command")
            if not isinstance(command, str) or not command:
                raise ConfigError("missing or not a string", source=source, key=f"{at}.command")
            args = e.get("args") or []
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ConfigError("expected a list of strings", source=source, key=f"{at}.args")
            envs = e.get("envs") or {}
            if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
                raise ConfigError("expected a mapping of names to strings", source=source, key=f"{at}.envs")
            workdir = e.get("workdir") or ""
            if not isinstance(workdir, str):
                raise ConfigError("expected a path", source=source, key=f"{at}.workdir")
            hooks.append(Hook(command, tuple(args), {str(k): v for k, v in envs.items()}, workdir))
        out[name] = tuple(hooks)
    return Hooks(out)
