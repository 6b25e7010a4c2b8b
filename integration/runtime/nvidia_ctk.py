"""Build the pinned ``nvidia-ctk`` from its published Go module, once, for the oracle tests (and, the same way,
``nvidia-container-runtime``, which the cluster's CDI test runs under containerd: ``ensure(tool=RUNTIME)``).

``python integration/runtime/nvidia_ctk.py`` prints the binary's path, building it when absent. The binary
is cached under ``~/.cache/nodeagent/nvidia-ctk/<version>/`` and Go's module and build caches under
``~/.cache/nodeagent/go``, so a warm run costs nothing and nothing lands in the repository or in ~/go.
The build runs under ``nice`` (the machines are shared); a lock file keeps two test runs from building
at once. Needs ``go``, a C compiler (go-nvml is cgo) and the Go module proxy; without them
:func:`ensure` raises :class:`Unavailable`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODULE = "github.com/NVIDIA/nvidia-container-toolkit"
VERSION = "v1.20.2"
TOOL = "nvidia-ctk"
RUNTIME = "nvidia-container-runtime"
CACHE = Path(os.environ.get("NODEAGENT_CACHE", Path.home() / ".cache/nodeagent"))
BUILD_TIMEOUT_S = 1800


class Unavailable(RuntimeError):
    """The toolchain or the module proxy is missing, or the build failed (the message says which)."""


def binary_path(version: str = VERSION, tool: str = TOOL) -> Path:
    return CACHE / "nvidia-ctk" / version / tool


def go_env() -> dict[str, str]:
    go = CACHE / "go"
    return {
        **os.environ,
        "GOPATH": str(go / "path"),
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        "GOFLAGS": "-buildvcs=false",
        "GOTOOLCHAIN": "local",
    }


def ensure(version: str = VERSION, tool: str = TOOL) -> Path:
    """The cached binary of ``tool`` (a command of the toolkit's module), built first when absent (returns at
    once when present)."""
    out = binary_path(version, tool)
    if out.is_file() and os.access(out, os.X_OK):
        return out
    go = shutil.which("go")
    if go is None:
        raise Unavailable(f"go is not installed (needed to build {tool} from its Go module)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same version
        if out.is_file():
            return out
        bindir = out.parent / f".bin.partial-{tool}"
        shutil.rmtree(bindir, ignore_errors=True)
        env = {**go_env(), "GOBIN": str(bindir)}
        started = time.monotonic()
        done = subprocess.run(
            ["nice", "-n", "10", go, "install", "-trimpath", f"{MODULE}/cmd/{tool}@{version}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not (bindir / tool).is_file():
            raise Unavailable(f"go install {MODULE}/cmd/{tool}@{version} failed:\n{done.stderr[-3000:]}")
        (bindir / tool).replace(out)  # atomic: a present binary is always a whole one
        shutil.rmtree(bindir, ignore_errors=True)
        seconds = "build-seconds" if tool == TOOL else f"build-seconds-{tool}"
        (out.parent / seconds).write_text(f"{time.monotonic() - started:.1f}\n")
    return out


if __name__ == "__main__":
    try:
        print(ensure(sys.argv[1] if len(sys.argv) > 1 else VERSION))
    except Unavailable as err:
        print(err, file=sys.stderr)
        sys.exit(2)
