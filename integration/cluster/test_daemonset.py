"""The DaemonSet on the real cluster, from the image `make image` builds.

The image (container/build.sh, the session's ``image`` fixture, shared with integration/deploy) is imported
into the cluster's containerd; ``kubectl apply -k`` of a test overlay on top of ``container/overlays/kubeadm``
gives a Ready pod on the node. The test overlay changes only what this machine needs:

- simulation (``--simulate``) and a temporary directory as the ``/host`` volume, laid out as a simulated node;
- the local image, never pulled (no registry is reachable);
- the host network on a free port: there is no CNI plugin with a pod network here;
- ``KUBERNETES_SERVICE_HOST``/``_PORT`` pointing at the API server: there is no kube-proxy for the
  ``kubernetes`` Service (explicit env wins over the kubelet's service variables);
- labels through the Node API (``labels.node_patch``, no start jitter): no NFD runs here to read the file.

The Node gets NFD's NVIDIA PCI label, as NFD would give a GPU node, so the DaemonSet's nodeSelector matches.
Then: the agent's labels appear on the Node; ``kubectl label ... nvidia.com/mig.config`` ends in
``nvidia.com/mig.config.state=success`` and MIG series on the pod's /metrics; deleting the DaemonSet and running
``nodeagent revert`` leaves the Node's labels and the host's files as before, except what revert keeps by
design (the MIG layout, which revert never repartitions; the agent's journal and the simulator's own state).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.agent import get
from integration.cluster.cluster import Cluster
from integration.cluster.support import REPO, node
from integration.image import BuiltImage
from tests.support import free_port, require, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

NAMESPACE = "nodeagent"
SELECTOR = "app.kubernetes.io/name%3Dnodeagent"
NFD_GPU_LABEL = "feature.node.kubernetes.io/pci-10de.present"
# What revert leaves by design: the agent's state (its journal), the simulator's persisted GPUs (the MIG
# layout stays: revert never repartitions), and the simulated devices and sysfs that follow that layout.
REVERT_KUBECONFIG = "/etc/nodeagent/kubeconfig"  # a host path, read through the root like every other
KEPT_BY_REVERT = ("var/lib/nodeagent/", "dev/", "sys/", "proc/driver/nvidia/capabilities/")


def kubectl(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def files(root: Path) -> dict[str, str]:
    """Every regular file and symlink under ``root``: its content's digest (a link: its target)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def overlay(directory: Path, image: BuiltImage, host: Path, port: int, apiserver_port: int) -> Path:
    """A kustomization on top of the kubeadm overlay with this machine's changes (the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(apiserver_port),
        "NODEAGENT_LABELS__NODE_PATCH": "true",
        "NODEAGENT_LABELS__START_JITTER_S": "0",
    }
    args = ["run", "--root", "/host", "--listen", f"0.0.0.0:{port}", "--log-format", "json", "--simulate"]
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image.tag},
        {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": args},
        {"op": "replace", "path": "/spec/template/spec/containers/0/ports/0/containerPort", "value": port},
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "replace", "path": "/spec/template/spec/volumes/0/hostPath/path", "value": str(host)},
    ]
    ops += [
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": k, "value": v}}
        for k, v in env.items()
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes a relative path only
        "resources": [os.path.relpath(REPO / "container/overlays/kubeadm", directory)],
        "patches": [{"target": {"kind": "DaemonSet", "name": "nodeagent"}, "patch": yaml.safe_dump(ops)}],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


def agent_pods(cluster: Cluster) -> list[dict[str, Any]]:
    doc = cluster.admin.get(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={SELECTOR}")
    items: list[dict[str, Any]] = doc["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def pod_story(cluster: Cluster) -> str:
    """The pods' status and the agent's last log lines (the kubelet's log files), for a failure message."""
    lines = [json.dumps(p.get("status", {}), indent=1)[-3000:] for p in agent_pods(cluster)]
    for log in sorted((cluster.base / "var/log/pods").glob(f"{NAMESPACE}_nodeagent-*/nodeagent/*.log")):
        lines.append(f"{log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(lines) or "no agent pod"


def until(cluster: Cluster, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """wait_until, with the pods' story in the failure."""
    try:
        wait_until(predicate, timeout_s=timeout_s, what=what)
    except pytest.fail.Exception as err:
        pytest.fail(f"{err}\nNode labels: {node(cluster)['metadata']['labels']}\n{pod_story(cluster)}")


@pytest.fixture
def host(cluster: Cluster, agent_token: str, tmp_path: Path) -> Iterator[Path]:
    """The node's root for the DaemonSet's /host: a simulated node, laid out before the agent starts, with a
    kubeconfig for the agent's ServiceAccount (for `nodeagent revert` run from the host, as docs/migration.md
    runs it from a debug pod)."""
    root = tmp_path / "host"
    laid = subprocess.run(
        [sys.executable, "-m", "nodeagent", "plan", "--simulate", "--only", "labels", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert (root / "etc/containerd/config.toml").exists(), laid.stderr
    (root / "etc/nodeagent").mkdir(parents=True, exist_ok=True)
    cluster.kubeconfig_for_token(root / REVERT_KUBECONFIG.lstrip("/"), agent_token)
    yield root


def test_the_daemonset_from_make_image_runs_labels_mig_and_reverts(
    cluster: Cluster, image: BuiltImage, host: Path, tmp_path: Path, node_restored: None
) -> None:
    require(shutil.which("kubectl") is not None, "kubectl is not installed")
    assert cluster.containerd is not None
    imported = cluster.containerd.ctr("-n", "k8s.io", "images", "import", str(image.archive), timeout=300)
    assert image.tag in imported.stdout, imported.stdout + imported.stderr

    admin = cluster.admin
    node_path = f"/api/v1/nodes/{cluster.node_name}"
    admin.merge_patch(node_path, {"metadata": {"labels": {NFD_GPU_LABEL: "true"}}})
    labels_before = node(cluster)["metadata"]["labels"]
    files_before = files(host)

    port = free_port()
    kustomize_dir = overlay(tmp_path / "overlay", image, host, port, int(cluster.url.rsplit(":", 1)[1]))
    kubectl(cluster, "apply", "-k", str(kustomize_dir))
    try:
        until(cluster, lambda: any(ready(p) for p in agent_pods(cluster)), 240, "a Ready nodeagent pod")
        (pod,) = agent_pods(cluster)
        assert pod["spec"]["nodeName"] == cluster.node_name

        def gpu_count() -> str | None:
            return node(cluster)["metadata"]["labels"].get("nvidia.com/gpu.count")

        until(cluster, lambda: gpu_count() == "8", 60, "the agent's labels")
        labels = node(cluster)["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"].startswith("NVIDIA-H100"), labels

        kubectl(cluster, "label", "node", cluster.node_name, "nvidia.com/mig.config=all-1g.10gb", "--overwrite")
        until(
            cluster,
            lambda: node(cluster)["metadata"]["labels"].get("nvidia.com/mig.config.state") == "success",
            120,
            "nvidia.com/mig.config.state=success",
        )

        def mig_series() -> bool:
            code, body = get(f"http://127.0.0.1:{port}/metrics")
            return code == 200 and 'GPU_I_PROFILE="1g.10gb"' in body.decode()

        until(cluster, mig_series, 60, "MIG series on the pod's /metrics")
    finally:
        kubectl(cluster, "delete", "daemonset", "nodeagent", f"--namespace={NAMESPACE}", "--wait=true")
    wait_until(lambda: agent_pods(cluster) == [], timeout_s=60, what="the agent's pod gone")

    kubectl(cluster, "label", "node", cluster.node_name, "nvidia.com/mig.config-")
    env = {
        "NODE_NAME": cluster.node_name,
        "NODEAGENT_KUBE__MODE": "kubeconfig",
        "NODEAGENT_KUBE__KUBECONFIG": REVERT_KUBECONFIG,
        "NODEAGENT_KUBE__NAMESPACE": NAMESPACE,
        "NODEAGENT_LABELS__NODE_PATCH": "true",
    }
    reverted = subprocess.run(
        [sys.executable, "-m", "nodeagent", "revert", "--simulate", "--root", str(host)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=tmp_path,
    )
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    print(f"\nnodeagent revert:\n{reverted.stdout}")

    labels_after = node(cluster)["metadata"]["labels"]
    assert labels_after == labels_before, {
        "added": sorted(set(labels_after) - set(labels_before)),
        "removed": sorted(set(labels_before) - set(labels_after)),
    }
    files_after = files(host)
    changed = sorted(
        p
        for p in set(files_before) | set(files_after)
        if files_before.get(p) != files_after.get(p) and not p.startswith(KEPT_BY_REVERT)
    )
    assert changed == [], f"host files not as before after revert: {changed}\n{reverted.stdout}"
