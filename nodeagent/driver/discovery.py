"""Find the driver root and the driver's user-space files under it (blocking; run off the loop).

The driver root is where libnvidia-ml, libcuda and nvidia-smi live: ``/`` for a host install,
``/run/nvidia/driver`` for a driver container, ``/home/kubernetes/bin/nvidia`` on GKE COS,
``/usr/local/nvidia`` on our GPU machine (flat: bin/, lib64/). A configured root is used alone; otherwise
the first candidate that holds libnvidia-ml or nvidia-smi wins, and every candidate leaves evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError
from nodeagent.model.driver import DriverFiles, DriverLibrary

CANDIDATE_ROOTS: tuple[str, ...] = ("/", "/run/nvidia/driver", "/home/kubernetes/bin/nvidia", "/usr/local/nvidia")

LIB_DIRS: tuple[str, ...] = (
    "usr/lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib/x86_64-linux-gnu",
    "lib",
)
BIN_DIRS: tuple[str, ...] = ("usr/bin", "bin")
FIRMWARE_DIRS: tuple[str, ...] = ("lib/firmware", "usr/lib/firmware", "firmware")

BINARIES: tuple[str, ...] = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
    "nvidia-imex",
    "nvidia-imex-ctl",
)

REQUIRED_LIBS: tuple[str, ...] = ("libnvidia-ml", "libcuda", "libnvidia-ptxjitcompiler")
REQUIRED_BINS: tuple[str, ...] = ("nvidia-smi",)

_VERSION = r"\d+\.\d+(?:\.\d+)?"
_ML_RE = re.compile(rf"^libnvidia-ml\.so\.({_VERSION})$")


@dataclass(frozen=True)
class RootSelection:
    files: DriverFiles | None
    """The chosen root's files; None when no candidate holds a driver."""
    evidence: tuple[str, ...]
    reason: str = ""
    """Why nothing was chosen, or why the chosen root is unusable (a partial driver)."""


def _join(prefix: str, rel: str) -> str:
    return str(PurePosixPath(prefix, rel))


def _rel(prefix: str, path: str) -> str:
    if prefix == "/":
        return path.lstrip("/")
    return str(PurePosixPath(path).relative_to(prefix))


def _dirs(root: Root, prefix: str, rels: tuple[str, ...]) -> list[str]:
    """Existing directories among ``rels`` under ``prefix``, each real directory once (lib -> lib64)."""
    seen: set[str] = set()
    out: list[str] = []
    for rel in rels:
        host = _join(prefix, rel)
        try:
            local = root.resolve(host)
        except HostPathError:
            continue
        if local.is_dir() and str(local) not in seen:
            seen.add(str(local))
            out.append(host)
    return out


def _ml_versions(root: Root, lib_dirs: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(version libnvidia-ml.so.1 points at or the newest, every version found, files found)."""
    versions: list[str] = []
    found: list[str] = []
    linked: str | None = None
    for d in lib_dirs:
        for name in root.listdir(d):
            m = _ML_RE.match(name)
            if m and root.is_file(f"{d}/{name}"):
                versions.append(m.group(1))
                found.append(f"{d}/{name}")
        so1 = f"{d}/libnvidia-ml.so.1"
        if linked is None and root.exists(so1):
            m = _ML_RE.match(root.resolve(so1).name)
            if m:
                linked = m.group(1)
    if linked is None and versions:
        linked = max(versions, key=_version_key)
    return linked, sorted(set(versions), key=_version_key), found


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def probe(root: Root, prefix: str) -> tuple[bool, str]:
    """Does ``prefix`` hold a driver? With one sentence of evidence either way."""
    if not root.is_dir(prefix):
        return False, f"{prefix}: absent"
    lib_dirs = _dirs(root, prefix, LIB_DIRS)
    _, _, ml_files = _ml_versions(root, lib_dirs)
    smi = [_join(b, "nvidia-smi") for b in _dirs(root, prefix, BIN_DIRS) if root.is_file(_join(b, "nvidia-smi"))]
    if ml_files or smi:
        return True, f"{prefix}: found {', '.join(ml_files[:1] + smi[:1])}"
    looked = ", ".join(_rel(prefix, d) or "." for d in lib_dirs) or "no library directory"
    return False, f"{prefix}: no libnvidia-ml.so.* (looked in {looked}) and no nvidia-smi"


def scan(root: Root, prefix: str) -> DriverFiles:
    """The driver files under ``prefix``; ``missing`` lists required files that are absent."""
    lib_dirs = _dirs(root, prefix, LIB_DIRS)
    bin_dirs = _dirs(root, prefix, BIN_DIRS)
    version, all_versions, _ = _ml_versions(root, lib_dirs)
    layout = "debian" if any(d.endswith("x86_64-linux-gnu") for d in lib_dirs) else "flat"
    libraries: list[DriverLibrary] = []
    if version is not None:
        for d in lib_dirs:
            libraries.extend(_libraries_in(root, d, version))
            libraries.extend(_libraries_in(root, f"{d}/vdpau", version))
    binaries = []
    for name in BINARIES:
        for b in bin_dirs:
            if root.is_file(_join(b, name)):
                binaries.append(_join(b, name))
                break
    firmware: list[str] = []
    if version is not None:
        for fw in _dirs(root, prefix, FIRMWARE_DIRS):
            fw_dir = f"{fw}/nvidia/{version}"
            firmware.extend(f"{fw_dir}/{n}" for n in root.listdir(fw_dir) if n.startswith("gsp") and n.endswith(".bin"))
    have = {lib.name.split(".so.")[0] for lib in libraries}
    missing = [f"{stem}.so.{version or '<version>'}" for stem in REQUIRED_LIBS if stem not in have]
    missing += [b for b in REQUIRED_BINS if not any(p.endswith("/" + b) for p in binaries)]
    evidence = []
    ml = next((lib for lib in libraries if lib.name.startswith("libnvidia-ml.so.")), None)
    if ml is not None:
        evidence.append(f"libnvidia-ml: {ml.path} (version {version})")
    evidence.append(f"{len(libraries)} driver libraries in {', '.join(lib_dirs) or 'no library directory'}")
    if binaries:
        evidence.append(f"binaries: {', '.join(binaries)}")
    if firmware:
        evidence.append(f"GSP firmware: {', '.join(firmware)}")
    return DriverFiles(
        root=prefix,
        layout=layout,
        library_version=version or "",
        libraries=tuple(libraries),
        binaries=tuple(binaries),
        firmware=tuple(firmware),
        evidence=tuple(evidence),
        missing=tuple(missing),
        stray_versions=tuple(v for v in all_versions if v != version),
    )


def _libraries_in(root: Root, directory: str, version: str) -> list[DriverLibrary]:
    names = root.listdir(directory)
    suffix = f".so.{version}"
    real = [n for n in names if n.endswith(suffix) and root.is_file(f"{directory}/{n}")]
    real = [n for n in real if not root.resolve(f"{directory}/{n}", follow_last=False).is_symlink()]
    links: dict[str, list[str]] = {n: [] for n in real}
    for n in names:
        local = root.resolve(f"{directory}/{n}", follow_last=False)
        if not local.is_symlink():
            continue
        try:
            target = root.resolve(f"{directory}/{n}")
        except HostPathError:
            continue
        if target.parent == root.resolve(directory) and target.name in links:
            links[target.name].append(n)
    return [DriverLibrary(f"{directory}/{n}", tuple(sorted(links[n], key=len, reverse=True))) for n in sorted(real)]


def normalise_configured(root: Root, configured: str) -> str:
    """A configured root given as the agent sees it (``/host/usr/local/nvidia``) becomes a host path."""
    base = str(root.path)
    if not root.is_host and (configured == base or configured.startswith(base + "/")):
        return configured[len(base) :] or "/"
    return configured


def select_root(root: Root, configured: str = "") -> RootSelection:
    """Choose the driver root: the configured one, else the first candidate holding a driver."""
    candidates = (normalise_configured(root, configured),) if configured else CANDIDATE_ROOTS
    evidence: list[str] = []
    for prefix in candidates:
        found, sentence = probe(root, prefix)
        evidence.append(sentence)
        if not found:
            continue
        files = scan(root, prefix)
        origin = "configured" if configured else "first candidate holding a driver"
        evidence.insert(0, f"driver root {prefix} ({origin}, {files.layout} layout)")
        evidence.extend(files.evidence)
        reason = ""
        if files.missing:
            reason = (
                f"driver root {prefix} holds only part of a driver: missing {', '.join(files.missing)}"
                " (an interrupted install or a wrong driver.root)"
            )
        return RootSelection(files, tuple(evidence), reason)
    where = configured or ", ".join(CANDIDATE_ROOTS)
    return RootSelection(None, tuple(evidence), f"no NVIDIA driver found under {where}")
