"""The pure patches of the GPU health on the Node: the condition from the report, the taint, drift."""

from __future__ import annotations

from typing import Any

from nodeagent.gpuhealth import node_status as ns
from nodeagent.model.health import CONDITION_TYPE, TAINT_KEY, GpuHealthReport, GpuIncident, NodeGpuHealth, Verdict

BAD = GpuHealthReport(0, "u", (GpuIncident("ALL", "DCGM_FR_FALLEN_OFF_BUS", Verdict.FAIL, "R", "m"),))


def node(**extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "n", "resourceVersion": "7", "labels": {}}, **extra}


def test_taint_follows_and_keeps_other_taints() -> None:
    other = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    n = node(spec={"taints": [other]})
    patch = ns.taint_patch(n, NodeGpuHealth((BAD,), taint=True))
    assert patch is not None and patch["spec"]["taints"] == [
        other,
        {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"},
    ]
    assert ns.taint_patch(n, NodeGpuHealth((BAD,), taint=False)) is None
    tainted = node(spec={"taints": patch["spec"]["taints"]})
    assert ns.taint_patch(tainted, NodeGpuHealth((GpuHealthReport(0, "u"),), taint=True))["spec"]["taints"] == [other]


def test_the_condition_says_what_the_report_says_and_drift_is_seen() -> None:
    report = NodeGpuHealth((BAD,), taint=True)
    patch = ns.condition_patch(node(), report, now=5)
    assert patch is not None
    (cond,) = patch["status"]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (CONDITION_TYPE, "False", "R")
    converged = node(
        status={"conditions": [cond]}, spec={"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]}
    )
    assert ns.condition_patch(converged, report, now=9) is None and not ns.out_of_sync(converged, report)
    assert ns.out_of_sync(node(status={"conditions": [cond]}), report), "the taint was taken away"
    assert ns.out_of_sync(node(spec=converged["spec"]), report), "the condition was taken away"
    assert ns.remove_condition_patch(converged) == {
        "status": {"conditions": [{"type": CONDITION_TYPE, "$patch": "delete"}]}
    }
    assert ns.remove_condition_patch(node()) is None
