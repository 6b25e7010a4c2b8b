"""How one MIG apply runs: one value from the command or the subsystem down to the executor.

``nodeagent mig apply`` fills it from mig-parted's flags and variables, the ``mig`` subsystem from its
context (the GPU-state owner's pause, the kubelet client the composition root built); the service plans
with ``mode_only`` and ``skip_reset``, finds holders with ``pods``, and the executor takes the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from nodeagent.mig.holders import PodLister
from nodeagent.mig.hooks import Hooks


class SamplingPause(Protocol):
    """The GPU-state owner's side: stop the agent's own NVML use of some GPUs during a change."""

    async def pause(self, indexes: Sequence[int]) -> None: ...

    async def resume(self, indexes: Sequence[int]) -> None: ...


class NoSamplingPause:
    """For one-shot commands: nothing in the process samples the GPUs."""

    async def pause(self, indexes: Sequence[int]) -> None:
        return None

    async def resume(self, indexes: Sequence[int]) -> None:
        return None


def _no_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ApplyOptions:
    """The knobs of one apply; the defaults are a plain ``nodeagent mig apply -f FILE -c NAME``."""

    mode_only: bool = False
    """Change MIG modes only, no instances (``--mode-only``)."""
    skip_reset: bool = False
    """Stop each GPU before its reset: its mode stays pending, nothing is created on it (``--skip-reset``)."""
    force: bool = False
    """Go on when processes or pods hold a GPU that changes (``--force``)."""
    hooks: Hooks = field(default_factory=Hooks)
    """mig-parted's hooks (``-k FILE``); none by default."""
    hook_env: Mapping[str, str] = field(default_factory=_no_env)
    """The ``MIG_PARTED_*`` variables the hooks see."""
    sampling: SamplingPause = field(default_factory=NoSamplingPause)
    """Pauses the agent's own use of the GPUs that change."""
    pods: PodLister | None = None
    """The kubelet's pod-resources, to name the pods holding a GPU that changes (None: no kubelet asked)."""
