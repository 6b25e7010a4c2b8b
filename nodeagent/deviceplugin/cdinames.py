"""The device names in the agent's own CDI spec (``cdi.spec_path``, through the Root), read again only when
the file changes, so Allocate answers only with names the runtime will find."""

from __future__ import annotations

from typing import Any

import yaml

from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError

_MAX_BYTES = 16 * 1024 * 1024


class CdiNames:
    def __init__(self, root: Root, spec_path: str) -> None:
        self.root = root
        self.spec_path = spec_path
        self._signature: tuple[int, int, int] | None = None
        self._names: frozenset[str] | None = None
        self.problem = ""

    def names(self) -> frozenset[str] | None:
        """Every ``<kind>=<name>`` in the spec; None when there is no readable spec (``problem`` says why).
        Blocking: call it off the loop."""
        try:
            st = self.root.resolve(self.spec_path).stat()
        except (OSError, HostPathError) as err:
            self._signature, self._names = None, None
            self.problem = f"no CDI spec at {self.spec_path}: {getattr(err, 'strerror', None) or err}"
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return self._names
        self._signature = signature
        self._names = self._read()
        return self._names

    def _read(self) -> frozenset[str] | None:
        try:
            data = self.root.read_bytes(self.spec_path, max_bytes=_MAX_BYTES)
            spec: Any = yaml.safe_load(data) if data is not None else None
        except (HostPathError, yaml.YAMLError) as err:
            self.problem = f"{self.spec_path}: {err}"
            return None
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
            self.problem = f"{self.spec_path}: not a CDI spec (no kind)"
            return None
        kind = spec["kind"]
        listed = spec.get("devices")
        devices: list[Any] = listed if isinstance(listed, list) else []
        self.problem = ""
        return frozenset(
            f"{kind}={d['name']}" for d in devices if isinstance(d, dict) and isinstance(d.get("name"), str)
        )
