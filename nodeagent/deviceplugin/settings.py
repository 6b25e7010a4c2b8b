"""The ``[deviceplugin]`` settings section (registered in ``nodeagent.settings``; docs in docs/configuration.md).

The MIG strategy is not here: it is ``labels.mig_strategy``, one setting for the GFD labels and the resources
advertised, so the two never disagree. The health hold is ``gpuhealth``'s (``xid_window_s``, the flapping hold).

``DevicePluginSettings.label_sharing`` is the one derivation of the time-slicing that GFD's sharing labels
follow (``nvidia.com/gpu.replicas``, ``.sharing-strategy``, the ``-SHARED`` product): the labels subsystem
calls it on its settings (subsystems never import each other), so the labels and the plugin read the same
keys and the same NVIDIA config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from nodeagent.settings.sections import at_least, opt

DEVICE_LIST_STRATEGIES = ("cdi-cri", "envvar", "cdi-annotations")
"""How Allocate names the devices, in NVIDIA's terms (its ``volume-mounts`` is not supported)."""


def _strategies(value: list[str]) -> str | None:
    if not value:
        return "must name at least one of " + ", ".join(DEVICE_LIST_STRATEGIES)
    for v in value:
        if v == "volume-mounts":
            return "volume-mounts is not supported; use cdi-cri, envvar or cdi-annotations"
        if v not in DEVICE_LIST_STRATEGIES:
            return f"{v!r} is not one of " + ", ".join(DEVICE_LIST_STRATEGIES)
    return None


def _replicas_per_gpu(value: dict[str, int]) -> str | None:
    bad = [k for k, v in value.items() if v < 1]
    return f"replicas must be >= 1 (GPU {bad[0]})" if bad else None


@dataclass(frozen=True)
class DevicePluginSettings:
    enabled: bool = opt(
        True,
        "Serve the kubelet's device plugin API: GPUs and MIG devices allocatable by pods (it waits for a kubelet "
        "that appears later).",
    )
    device_id_strategy: Literal["uuid", "index"] = opt(
        "uuid", "Device IDs the kubelet sees: the GPU's (or MIG device's) UUID, or its index (`0`, `0:1`)."
    )
    device_list_strategy: list[str] = opt(
        ["cdi-cri"],
        "How Allocate names the devices (NVIDIA's names): `cdi-cri` (CDI device names from the agent's own "
        "CDI spec), `envvar` (NVIDIA_VISIBLE_DEVICES), `cdi-annotations` (CDI annotations).",
        check=_strategies,
    )
    config_file: str = opt(
        "",
        "NVIDIA's device-plugin config file (version v1: `flags.migStrategy`, `flags.plugin.deviceIDStrategy`, "
        "`flags.plugin.deviceListStrategy`, `sharing.timeSlicing`), a path in the agent's filesystem, watched "
        "(a ConfigMap update is used live); its values override the keys below. Anything else in it (MPS "
        "included) is an error.",
    )
    replicas: int = opt(1, "Time-slicing: replicas of every GPU (1: no sharing).", check=at_least(1))
    replicas_per_gpu: dict[str, int] = opt(
        {},
        'Time-slicing per GPU, by index or UUID, e.g. {"0" = 4, "1" = 2}; GPUs not named get `replicas`.',
        check=_replicas_per_gpu,
    )
    rename_by_default: bool = opt(
        False, "Time-slicing: advertise shared GPUs as `<resource>.shared` (NVIDIA's renameByDefault)."
    )
    fail_requests_greater_than_one: bool = opt(
        False, "Time-slicing: refuse a request for more than one replica of a shared resource."
    )
    register_timeout_s: float = opt(5.0, "Timeout of one Register call to the kubelet.", check=at_least(0.1))

    def label_sharing(self, mig_strategy: str, config_text: str | None = None, *, source: str = "") -> LabelSharing:
        """The time-slicing these settings (and ``config_text``, the text of ``config_file``, when given) make
        the plugin advertise, as GFD's labels see it (pure). ConfigError (naming ``source`` and the key) when
        the file is bad, exactly as the plugin would refuse it."""
        from nodeagent.deviceplugin import config  # it builds on this module

        parsed = config.parse(config_text, source=source) if config_text is not None else None
        return config.label_sharing(config.effective(self, mig_strategy, parsed, source=source).time_slicing)


@dataclass(frozen=True)
class LabelSharing:
    """The device plugin's time-slicing per resource, as GFD labels it: (replicas, renamed). ``renamed``: the
    replicas are advertised under another name (``rename``, or ``renameByDefault``), so the product label has no
    ``-SHARED`` suffix. A resource with several entries (per-GPU replicas, which NVIDIA's labels cannot say)
    is labelled with its entry for all devices, else its first one."""

    resources: Mapping[str, tuple[int, bool]] = field(default_factory=dict)
    """Resource name (``nvidia.com/gpu``, ``nvidia.com/mig-1g.10gb``) → (replicas, renamed)."""
    every: tuple[int, bool] | None = None
    """For every resource not named (``deviceplugin.replicas``)."""

    @property
    def time_slicing(self) -> bool:
        """Whether any resource is shared (replicas > 1)."""
        return any(r > 1 for r, _ in (*self.resources.values(), *([self.every] if self.every else [])))
