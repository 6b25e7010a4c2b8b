"""What every engine (containerd, CRI-O, docker) shares: the runtime to add and the edit it produces.

Engines are pure: given the bytes of the files they read (``Files``), they return the bytes each file
should have (``Edit``). They never touch the host; the subsystem reads and writes through the Root.

Each engine module also has an ``EngineKind`` (its ``KIND``): which files the engine needs on a node
(``gather``, through a ``Reader`` the subsystem backs with the Root), how its ``Engine`` is built from them,
and the few things that differ between daemons (a version that changes the merge rules, SIGHUP, what a
reload keeps). ``runtime/engines.py`` finds the kind by the name ``detect.py`` gives; the subsystem never
asks which engine it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nodeagent.errors import ConfigError
from nodeagent.runtime.detect import Detected

Files = Mapping[str, bytes | None]
"""Host path → current bytes (None: absent)."""
Listings = Mapping[str, tuple[str, ...]]
"""Host directory → the names of the regular files in it."""


@dataclass(frozen=True)
class RuntimeSpec:
    """The runtime the agent adds (settings [runtime])."""

    name: str = "nvidia"
    path: str = "/usr/bin/nvidia-container-runtime"
    set_as_default: bool = False
    enable_cdi: bool = False

    def handlers(self) -> tuple[tuple[str, str], ...]:
        """(handler, binary) pairs, as nvidia-ctk configures them so each GPU Operator RuntimeClass works."""
        return (
            (self.name, self.path),
            (f"{self.name}-cdi", f"{self.path}.cdi"),
            (f"{self.name}-legacy", f"{self.path}.legacy"),
        )

    def handler_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.handlers())


CDI_ANNOTATIONS = ("cdi.k8s.io/*",)
"""container_annotations on every handler: CDI devices requested by pod annotation reach the runtime."""


@dataclass(frozen=True)
class Effect:
    """One change of an effective setting, e.g. ``default runtime 'runc' -> 'nvidia'``."""

    setting: str
    """``default-runtime`` or ``cdi``."""
    before: object
    after: object
    path: str
    """The file whose write causes it."""

    @property
    def summary(self) -> str:
        what = {"default-runtime": "default runtime", "cdi": "CDI (enable_cdi)"}.get(self.setting, self.setting)
        return f"{what} {self.before!r} -> {self.after!r} (every new container is affected; revert restores it)"


@dataclass
class Edit:
    """New contents per file (only files that would change), and what the engine noticed."""

    writes: dict[str, bytes | None] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)
    """Host path → one sentence for the plan step."""
    effects: list[Effect] = field(default_factory=list)
    """Changes of the runtime's effective behaviour (default runtime, CDI) the writes cause: each one is
    shown as a plan step of its own, never hidden in a file diff."""

    def put(self, path: str, old: bytes | None, new: bytes | None, summary: str) -> None:
        if old is not None and old.startswith(BOM) and new is not None and not new.startswith(BOM):
            new = BOM + new  # parsed without it (decode), written back with it
        if old != new:
            self.writes[path] = new
            self.summaries[path] = summary


class Engine(Protocol):
    """One container runtime's configuration, as pure document edits."""

    name: str

    def watched(self) -> tuple[str, ...]:
        """Host paths whose change may remove the runtime (drift watch)."""

    def desired(self, spec: RuntimeSpec) -> Edit:
        """Add (or keep) the runtime; raise ConfigError on bad input."""

    def removed(self, spec: RuntimeSpec) -> Edit:
        """Take the runtime out again (files the agent created are removed)."""


class Reader:
    """The host files and directory listings an engine reads on a node, each read once.

    The subsystem backs it with the Root (off the loop, size-limited); an engine's ``gather`` only says
    what to read.
    """

    def __init__(self, read_file: Callable[[str], bytes | None], list_files: Callable[[str], list[str]]) -> None:
        self._read_file = read_file
        self._list_files = list_files
        self.files: dict[str, bytes | None] = {}
        self.listings: dict[str, tuple[str, ...]] = {}

    def read(self, path: str) -> bytes | None:
        if path not in self.files:
            self.files[path] = self._read_file(path)
        return self.files[path]

    def listdir(self, directory: str) -> tuple[str, ...]:
        if directory not in self.listings:
            self.listings[directory] = tuple(self._list_files(directory))
        return self.listings[directory]


@dataclass(frozen=True)
class NodeConfig:
    """What was read from the node for one engine: the files, the listings, the daemon's own view."""

    files: Files
    listings: Listings = field(default_factory=dict)
    version: str = ""
    """The daemon's version ('' when unknown or not asked for)."""
    dump: bytes | None = None
    """The daemon's dump of its effective config, when settings ask for it (containerd)."""


class EngineKind(Protocol):
    """One container runtime as the runtime subsystem meets it, before an ``Engine`` exists.

    Engine modules subclass it (``KIND``) and inherit the defaults.
    """

    name: str
    """The name ``detect.py`` gives the engine (``Detected.engine``)."""
    versioned: bool = False
    """The edit depends on the daemon's version, and its ``config dump`` may stand in for the files."""
    version_unknown: str = ""
    """Plan evidence when a versioned daemon's version cannot be found."""
    signal_restart: str = ""
    """Plan warning for ``restart = signal`` when SIGHUP does not just reload the daemon."""
    checks_handler: bool = False
    """After a restart, runtime control checks the handler in the daemon's own dump of its config."""

    def gather(self, detected: Detected, reader: Reader) -> None:
        """Read (through ``reader``) every file the engine needs; raise ConfigError on bad input."""

    def build(self, detected: Detected, node: NodeConfig) -> Engine:
        """The engine for what ``gather`` read."""

    def revert_notes(
        self, detected: Detected, spec: RuntimeSpec, read: Callable[[str], bytes | None]
    ) -> tuple[str, ...]:
        """What the operator should know after a revert and a restart (blocking: ``read`` reads a file)."""
        return ()


BOM = b"\xef\xbb\xbf"


def decode(path: str, data: bytes) -> str:
    """UTF-8 text without a leading byte order mark (which containerd and dockerd accept)."""
    try:
        return data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte {err.start})", source=path, line=line) from None


def toml_error(path: str, err: Exception, line_offset: int = 0) -> ConfigError:
    """A tomlkit ParseError as a ConfigError naming the file and line."""
    line = getattr(err, "line", None)
    col = getattr(err, "col", None)
    message = str(err)
    message = message.split(" at line ", maxsplit=1)[0] if " at line " in message else message
    where = f" (column {col})" if col else ""
    return ConfigError(
        f"malformed TOML: {message}{where}",
        source=path,
        line=line + line_offset if isinstance(line, int) else None,
    )


def kind_of(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, Mapping) else type(value).__name__)


def want_type(path: str, value: object, expected: type | tuple[type, ...], key: str, what: str) -> None:
    """ConfigError naming the file and key when ``value`` is not of the ``expected`` type."""
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"must be {what}, got {kind_of(value)} ({value!r:.40})", source=path, key=key)
