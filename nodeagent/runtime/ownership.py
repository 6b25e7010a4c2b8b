"""One owner per host path: settings that would let two subsystems write the same file are refused.

The runtime subsystem owns the container runtimes' config files and directories (its revert restores
every backed-up file under them), the CDI subsystem owns its spec, the agent owns its state directory.
``cdi.spec_path`` pointed at the containerd config once overwrote it; this check makes that a settings
error naming both keys instead.
"""

from __future__ import annotations

import posixpath

from nodeagent.errors import ConfigError
from nodeagent.runtime import detect as det
from nodeagent.settings import Settings

RUNTIME_DIRS = (
    "/etc/containerd",
    "/etc/k0s",
    det.K3S_DIR,
    det.RKE2_DIR,
    det.MICROK8S_ARGS,
    "/etc/crio",
    "/etc/docker",
)
"""Directories whose files belong to the runtime subsystem (backed-up files there are its to revert)."""


def _under(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def owners(settings: Settings) -> list[tuple[str, str, str]]:
    """(setting key, owner, host path or directory) for every path a subsystem or the agent writes."""
    out = [("agent.state_dir", "the agent (backup journal)", settings.agent.state_dir)]
    if settings.runtime.enabled:
        if settings.runtime.config_path:
            out.append(("runtime.config_path", "the runtime subsystem", settings.runtime.config_path))
            out.append(
                ("runtime.config_path", "the runtime subsystem", posixpath.dirname(settings.runtime.config_path))
            )
        out += [("runtime (built-in layout)", "the runtime subsystem", d) for d in RUNTIME_DIRS]
    if settings.cdi.enabled:
        out.append(("cdi.spec_path", "the CDI subsystem", settings.cdi.spec_path))
    return out


def check_owned_paths(settings: Settings) -> None:
    """Raise ConfigError when one subsystem's output path lies in what another one owns."""
    claims = owners(settings)
    for key_a, owner_a, path_a in claims:
        if key_a == "runtime (built-in layout)" or path_a == posixpath.dirname(settings.runtime.config_path or "-"):
            continue  # directories are only ever the second party
        for key_b, owner_b, path_b in claims:
            if owner_a == owner_b or not _under(path_a, path_b):
                continue
            raise ConfigError(
                f"{path_a!r} is also owned by {owner_b} ({key_b} = {path_b!r}); two subsystems may never write "
                "one path (one would overwrite, and its revert restore, the other's file): choose another path",
                key=key_a,
            )
