"""Pure patches for the Node as MIG's control surface: the MIG config label and its state and the
``NvidiaMigConfigured`` condition (over the generic ones in ``kube.nodepatch``). Each function returns
``None`` when the Node already is as wanted, so a converged node makes no writes.

The contracts kept are mig-manager's (``nvidia.com/mig.config`` in, ``nvidia.com/mig.config.state`` out with
``pending``, ``rebooting``, ``success``, ``failed``). The operand labels paused around a MIG change are the
mig subsystem's (``mig.operands``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodeagent.kube import nodepatch
from nodeagent.model.mig import MigReadiness

MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STATE_LABEL = "nvidia.com/mig.config.state"
MIG_CONDITION = "NvidiaMigConfigured"
_MIG_REASONS = {
    "pending": ("False", "MigConfigPending"),
    "rebooting": ("False", "MigRebootRequired"),
    "success": ("True", "MigConfigApplied"),
    "failed": ("False", "MigConfigFailed"),
}


def desired_mig_config(node: Mapping[str, Any]) -> str:
    """The config the Node's ``nvidia.com/mig.config`` label names ('' when absent)."""
    return str(nodepatch.labels_of(node).get(MIG_CONFIG_LABEL, ""))


def mig_state_patch(node: Mapping[str, Any], readiness: MigReadiness) -> dict[str, Any] | None:
    """Set ``nvidia.com/mig.config.state``, only for the config the label asks for (mig-manager's contract)."""
    if not readiness.config or desired_mig_config(node) != readiness.config:
        return None
    return nodepatch.label_patch(node, {MIG_STATE_LABEL: readiness.state})


def mig_state_removal_patch(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """Remove ``nvidia.com/mig.config.state`` (revert); None when it is not there."""
    return nodepatch.label_patch(node, {MIG_STATE_LABEL: None})


def mig_condition(readiness: MigReadiness) -> tuple[str, str, str]:
    """(status, reason, message) of ``NvidiaMigConfigured``."""
    status, reason = _MIG_REASONS.get(readiness.state, ("Unknown", "MigConfigUnknownState"))
    message = f"MIG config {readiness.config!r}: {readiness.state}"
    if readiness.reason:
        message += f": {readiness.reason}"
    return status, reason, message


condition_patch = nodepatch.condition_patch
has_condition = nodepatch.has_condition
remove_conditions_patch = nodepatch.remove_conditions_patch
