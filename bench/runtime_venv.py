"""A virtual environment with only the runtime dependencies (``pip install .``, no test or lint extras),
so the benchmarks measure what a production install loads: the test venv also holds ``rich`` (pulled in
by a lint tool), which structlog imports when present (+3.5 MiB, +50 ms).

It lives under ``$NODEAGENT_BENCH_VENV`` or ``~/.cache/nodeagent-bench/runtime-<hash of pyproject.toml>``
and is built once (about a minute); the package is installed from a copy of the repository's source so
no build files land in the checkout. ``NODEAGENT_BENCH_VENV=test`` uses the test venv instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def location() -> Path:
    configured = os.environ.get("NODEAGENT_BENCH_VENV", "")
    if configured:
        return Path(configured)
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "nodeagent-bench" / f"runtime-{digest}"


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "nodeagent").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def python() -> tuple[Path, str]:
    """(the interpreter, a description for tables); builds or refreshes the venv when needed."""
    if os.environ.get("NODEAGENT_BENCH_VENV") == "test":
        return Path(sys.executable), "test venv (with test and lint extras)"
    venv = location()
    py = venv / "bin" / "python"
    stamp = venv / ".nodeagent-source"
    digest = _source_digest()
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not stamp.exists() or stamp.read_text() != digest:
        with tempfile.TemporaryDirectory(prefix="nodeagent-src-") as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(
                REPO,
                src,
                ignore=shutil.ignore_patterns(
                    ".venv", ".git", ".nodeagent", "*_cache", "__pycache__", "build", "*.egg-info"
                ),
            )
            subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", str(src)], check=True)
        stamp.write_text(digest)
    return py, f"runtime-only venv {venv} (pip install .)"


def has(py: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(py), "-c", code], check=False).returncode == 0


if __name__ == "__main__":
    print(python()[1])
