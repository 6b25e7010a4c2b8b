"""The pure Node patches of the MIG control surface: the state label, conditions (transition time kept)."""

from __future__ import annotations

from typing import Any

from nodeagent.labels import node_status as ns
from nodeagent.model.mig import MigReadiness


def node(labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "n", "resourceVersion": "7", "labels": labels or {}}, **extra}


def test_state_label_only_for_the_config_the_label_names() -> None:
    n = node({ns.MIG_CONFIG_LABEL: "all-balanced"})
    assert ns.mig_state_patch(n, MigReadiness("all-balanced", "pending")) == {
        "metadata": {"resourceVersion": "7", "labels": {ns.MIG_STATE_LABEL: "pending"}}
    }
    assert ns.mig_state_patch(n, MigReadiness("all-1g.10gb", "success")) is None
    done = node({ns.MIG_CONFIG_LABEL: "all-balanced", ns.MIG_STATE_LABEL: "success"})
    assert ns.mig_state_patch(done, MigReadiness("all-balanced", "success")) is None


def test_condition_patch_on_change_only_and_transition_kept() -> None:
    assert (
        ns.condition_patch(node(), "X", "True", "R", "m", now=0)["status"]["conditions"][0]["lastTransitionTime"]
        == "1970-01-01T00:00:00Z"
    )
    old = {"type": "X", "status": "False", "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    n = node(status={"conditions": [old]})
    assert ns.condition_patch(n, "X", "False", "R", "m", now=5) is None
    same_status = ns.condition_patch(n, "X", "False", "R2", "m2", now=5)
    assert same_status["status"]["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = ns.condition_patch(n, "X", "True", "R", "m", now=5)
    assert flipped["status"]["conditions"][0]["lastTransitionTime"] == "1970-01-01T00:00:05Z"
