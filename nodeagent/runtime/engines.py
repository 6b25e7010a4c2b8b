"""The engines the runtime subsystem can configure, found by the name ``detect.py`` gives them.

Each engine module owns its ``KIND`` (``engine.EngineKind``): adding an engine is a module with an
``Engine`` and a kind, its entry here, and its layouts in ``detect.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodeagent.runtime import containerd, crio, docker
from nodeagent.runtime.detect import Detected
from nodeagent.runtime.engine import EngineKind

ENGINES: Mapping[str, EngineKind] = {kind.name: kind for kind in (containerd.KIND, crio.KIND, docker.KIND)}


def kind_of(detected: Detected) -> EngineKind:
    """The kind of the engine ``detect.py`` found."""
    return ENGINES[detected.engine]
