"""The publishers' pure parts: NFD file bytes, the owned-keys Node patch, NodeFeature and RuntimeClass
decisions, and the timestamp kept across restarts."""

from __future__ import annotations

from typing import Any

from nodeagent.labels import planner, publish_nfd, publish_node, publish_nodefeature, publish_runtimeclass
from nodeagent.labels.labelers import LabelSet
from nodeagent.labels.publish_node import OWNED_ANNOTATION


def node(labels: dict[str, str], owned: str | None = None, rv: str = "7") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "n", "resourceVersion": rv, "labels": labels}
    if owned is not None:
        meta["annotations"] = {OWNED_ANNOTATION: owned}
    return {"metadata": meta}


def test_nfd_file_is_sorted_key_value_lines_and_round_trips() -> None:
    data = publish_nfd.render({"b": "2", "a": "1"})
    assert data == b"a=1\nb=2\n"
    assert publish_nfd.parse(data + b"# +expiry-time: 2030-01-01T00:00:00Z\nbare\n") == {
        "a": "1",
        "b": "2",
        "bare": "true",
    }
    assert publish_nfd.plan_step("/f", data, {"a": "1", "b": "2"}) is None
    step = publish_nfd.plan_step("/f", data, {"a": "1"})
    assert step is not None and "-b=2" in step.diff


def test_node_patch_adds_changes_and_records_owned_keys() -> None:
    patch = publish_node.node_patch(node({"team": "ml", "nvidia.com/gpu.count": "4"}), {"nvidia.com/gpu.count": "8"})
    assert patch == {
        "metadata": {
            "resourceVersion": "7",
            "labels": {"nvidia.com/gpu.count": "8"},
            "annotations": {OWNED_ANNOTATION: "nvidia.com/gpu.count"},
        }
    }


def test_node_patch_removes_stale_owned_keys_only() -> None:
    current = node({"team": "ml", "nvidia.com/mig-1g.10gb.count": "7", "x": "1"}, owned="nvidia.com/mig-1g.10gb.count")
    patch = publish_node.node_patch(current, {"nvidia.com/mig-3g.40gb.count": "2"})
    assert patch is not None
    assert patch["metadata"]["labels"] == {"nvidia.com/mig-1g.10gb.count": None, "nvidia.com/mig-3g.40gb.count": "2"}
    assert "team" not in patch["metadata"]["labels"] and "x" not in patch["metadata"]["labels"]


def test_node_patch_is_none_when_converged() -> None:
    assert publish_node.node_patch(node({"a": "1", "b": "2"}, owned="a"), {"a": "1"}) is None
    # Labels right but the annotation missing: only the annotation is written.
    patch = publish_node.node_patch(node({"a": "1"}), {"a": "1"})
    assert patch == {"metadata": {"resourceVersion": "7", "annotations": {OWNED_ANNOTATION: "a"}}}


def test_revert_patch_removes_owned_labels_and_the_annotation() -> None:
    patch = publish_node.revert_patch(node({"a": "1", "team": "ml"}, owned="a,gone"))
    assert patch == {
        "metadata": {"resourceVersion": "7", "labels": {"a": None}, "annotations": {OWNED_ANNOTATION: None}}
    }


def test_nodefeature_named_and_labelled_as_gfd_and_updated_only_on_difference() -> None:
    body = publish_nodefeature.desired("node-a", "gpu-operator", {"a": "1"})
    assert body["metadata"] == {
        "name": "nvidia-features-for-node-a",
        "namespace": "gpu-operator",
        "labels": {"nfd.node.kubernetes.io/node-name": "node-a"},
    }
    assert (
        publish_nodefeature.update(
            {**body, "metadata": {**body["metadata"], "resourceVersion": "3"}}, "node-a", {"a": "1"}
        )
        is None
    )
    updated = publish_nodefeature.update(
        {**body, "metadata": {**body["metadata"], "resourceVersion": "3"}}, "node-a", {"a": "2"}
    )
    assert updated is not None and updated["spec"]["labels"] == {"a": "2"}
    assert updated["metadata"]["resourceVersion"] == "3"


def test_runtimeclass_actions() -> None:
    assert publish_runtimeclass.action(None, "nvidia") == "create"
    assert publish_runtimeclass.action(publish_runtimeclass.desired("nvidia"), "nvidia") == ""
    assert publish_runtimeclass.action({"metadata": {"name": "nvidia"}, "handler": "nvidia"}, "nvidia") == "label"
    assert publish_runtimeclass.action({"metadata": {"name": "nvidia"}, "handler": "runc"}, "nvidia") == "recreate"
    assert not publish_runtimeclass.ours({"metadata": {"name": "nvidia"}})


def test_published_timestamp_is_kept_while_the_rest_is_unchanged() -> None:
    targets = planner.Targets(node_name="n", nfd_file="/f")
    published = {"nvidia.com/gfd.timestamp": "100", "a": "1"}
    obs = planner.Observation(
        label_set=LabelSet({"nvidia.com/gfd.timestamp": "200", "a": "1"}), nfd_existing=publish_nfd.render(published)
    )
    assert planner.plan(obs, targets).empty
    obs.label_set = LabelSet({"nvidia.com/gfd.timestamp": "200", "a": "2"})
    (step,) = planner.plan(obs, targets).steps
    assert "+nvidia.com/gfd.timestamp=<publication time>" in step.diff
    assert b"nvidia.com/gfd.timestamp=200\n" in step.payload


def test_plan_warns_per_publisher_and_about_dropped_labels() -> None:
    targets = planner.Targets(node_name="n", node_patch=True)
    obs = planner.Observation(
        label_set=LabelSet({"a": "1"}, dropped=(("nvidia.com/gpu.product", "x" * 70, "value: too long"),)),
        kube_problems={"node": "Node n does not exist (yet)"},
    )
    plan = planner.plan(obs, targets)
    assert plan.empty
    assert plan.warnings[0] == "node: Node n does not exist (yet)"
    assert "label nvidia.com/gpu.product=" in plan.warnings[1] and "value: too long" in plan.warnings[1]
    assert planner.plan(planner.Observation(problems=["no GPU inventory: x"]), targets).error == "no GPU inventory: x"
