"""The Kubernetes manifests as users apply them: every overlay rendered offline by `kubectl kustomize`,
validated (strict: unknown fields are errors) against the API schemas of the last three Kubernetes
minor versions that `kubernetes-validate` ships, and checked for what the agent needs to run.

No API server can run here; the schemas are the API's own OpenAPI documents, so a field the API server
would reject with `unknown field` or a wrong type fails here too. Custom resources (the Prometheus
Operator's ServiceMonitor) have no schema in that package and are checked field by field.
"""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path

import pytest

from nodeagent.cli import load_settings, make_parser
from tests.support import require

from .kube import (
    BASE,
    COMPONENT_DIR,
    NFD_NVIDIA_PCI,
    OVERLAY_DIR,
    OVERLAYS,
    Doc,
    agent_container,
    find,
    literal_env,
    render,
)

pytestmark = pytest.mark.integration

EXPECTED_OVERLAYS = {"gke", "k0s", "k3s", "kubeadm", "microk8s", "rke2"}
# The distribution each overlay pins (runtime.distribution), and its kubelet pod-resources socket.
DISTRIBUTION = {"kubeadm": "plain", "k0s": "k0s", "k3s": "k3s", "rke2": "rke2", "microk8s": "microk8s", "gke": "plain"}
KUBELET_SOCKET = {
    "k0s": "/var/lib/k0s/kubelet/pod-resources/kubelet.sock",
    "microk8s": "/var/snap/microk8s/common/var/lib/kubelet/pod-resources/kubelet.sock",
}
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def kubernetes_versions(count: int = 3) -> list[str]:
    try:
        from kubernetes_validate import utils
    except ImportError:
        require(False, "kubernetes-validate is not installed (pip install -e '.[test]')")
        raise
    minors = sorted({utils.major_minor(v) for v in utils.all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    return minors[-count:]


def validate(doc: Doc, version: str) -> None:
    from kubernetes_validate import utils

    utils.validate(doc, version, strict=True)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(OVERLAY_DIR / request.param)


def test_there_is_an_overlay_per_distribution() -> None:
    assert set(OVERLAYS) == EXPECTED_OVERLAYS


def test_every_overlay_validates_against_the_last_three_kubernetes_minors(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    versions = kubernetes_versions()
    assert len(versions) == 3, versions
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service"} <= kinds
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS, f"{name}: custom resources belong in components"
        for version in versions:
            validate(doc, version)  # raises with the path of the bad field


def test_the_validation_rejects_a_misspelt_field() -> None:
    """The check above can fail: a typo the API server would refuse is refused here."""
    from kubernetes_validate.utils import ValidationError

    daemonset = copy.deepcopy(find(render(BASE), "DaemonSet"))
    spec = daemonset["spec"]["template"]["spec"]
    spec["nodeSelecter"] = spec.pop("nodeSelector")
    with pytest.raises(ValidationError, match="nodeSelecter"):
        validate(daemonset, kubernetes_versions()[-1])
    daemonset = copy.deepcopy(find(render(BASE), "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
    with pytest.raises(ValidationError):
        validate(daemonset, kubernetes_versions()[-1])


def test_daemonset_lands_on_gpu_nodes_without_the_gpu_operator(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    pod = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    text = str(docs)
    assert "nvidia.com/gpu.present" not in text  # the label only the GPU Operator's GFD sets
    if name == "gke":
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": [{"key": "cloud.google.com/gke-accelerator", "operator": "Exists"}]}]
        assert "nodeSelector" not in pod
    else:
        assert pod["nodeSelector"] == {NFD_NVIDIA_PCI: "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_namespace_enforces_pod_security_privileged(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    labels = find(docs, "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"
    namespaced = [d for d in docs if d["kind"] in ("ServiceAccount", "DaemonSet", "Service", "ResourceQuota")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"nodeagent"}


def test_service_scrapes_each_agent_pod_on_9400(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    service = find(docs, "Service")
    daemonset = find(docs, "DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"  # one endpoint per node, not a load-balanced VIP
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = agent_container(docs)["ports"]
    assert port["port"] == 9400 and port["targetPort"] == container_port["name"]
    assert container_port["containerPort"] == 9400


def test_rbac_binds_the_daemonsets_service_account(overlay: tuple[str, list[Doc]]) -> None:
    """container/kubernetes/rbac.yaml (its rules are owned with the agent's API code) wired to the pods."""
    _, docs = overlay
    account = find(docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]
    find(docs, "ServiceAccount", account)
    binding = find(docs, "ClusterRoleBinding")
    assert {"kind": "ServiceAccount", "name": account, "namespace": "nodeagent"} in binding["subjects"]
    find(docs, "ClusterRole", binding["roleRef"]["name"])


def test_daemonset_args_and_env_are_settings_the_agent_accepts(overlay: tuple[str, list[Doc]]) -> None:
    """The container's args and NODEAGENT_* variables go through the agent's own parser and settings."""
    name, docs = overlay
    container = agent_container(docs)
    env = literal_env(container)
    assert any(e["name"] == "NODE_NAME" and "fieldRef" in e["valueFrom"] for e in container["env"] if "valueFrom" in e)
    settings = load_settings(make_parser().parse_args(container["args"]), env)
    assert settings.agent.root == "/host"
    assert settings.agent.listen == "0.0.0.0:9400"
    assert settings.runtime.distribution == DISTRIBUTION[name]
    assert settings.kubelet.pod_resources_socket == KUBELET_SOCKET.get(
        name, "/var/lib/kubelet/pod-resources/kubelet.sock"
    )
    if name == "gke":  # COS: /usr is read-only, everything NVIDIA lives under the driver's install dir
        assert settings.driver.root == "/home/kubernetes/bin/nvidia"
        for path in (settings.runtime.runtime_path, settings.cdi.hook_path):
            assert path.startswith("/home/kubernetes/bin/nvidia/"), path
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/host"]["mountPropagation"] == "HostToContainer"
    volumes = {v["name"]: v for v in find(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/host"]["name"]]["hostPath"]["path"] == "/"
    grace = find(docs, "DaemonSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert settings.agent.hard_exit_timeout_s < grace  # the agent ends its own shutdown before SIGKILL


def test_a_misspelt_setting_in_an_overlay_is_an_error_naming_it() -> None:
    from nodeagent.errors import ConfigError

    with pytest.raises(ConfigError, match="NODEAGENT_RUNTIME__DISTRIBUTON"):
        load_settings(make_parser().parse_args(["run"]), {"NODEAGENT_RUNTIME__DISTRIBUTON": "k0s"})


def test_gke_allows_system_node_critical_pods_in_the_namespace() -> None:
    docs = render(OVERLAY_DIR / "gke")
    quota = find(docs, "ResourceQuota", "nodeagent-critical-pods")
    assert quota["metadata"]["namespace"] == "nodeagent"
    (expression,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    priority = find(docs, "DaemonSet")["spec"]["template"]["spec"]["priorityClassName"]
    assert expression == {"scopeName": "PriorityClass", "operator": "In", "values": [priority]}


def test_prometheus_operator_component_selects_the_service(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources: [{os.path.relpath(OVERLAY_DIR / "kubeadm", tmp_path)}]
        components: [{os.path.relpath(COMPONENT_DIR / "prometheus-operator", tmp_path)}]
        """)
    )
    docs = render(tmp_path)
    monitor = find(docs, "ServiceMonitor")
    service = find(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # fields the CRD (monitoring.coreos.com/v1) defines for an endpoint; a typo would be silently ignored
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            validate(doc, kubernetes_versions()[-1])
