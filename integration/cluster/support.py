"""Helpers of the cluster tests: pods on the real node, waits on the real API server, and the simulated GPU node
whose CDI devices containerd injects (``write_gpu_node``), seen from inside a container by the static device
probe (``PROBE_IMAGE``)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from integration.cluster.api import Api, ApiError
from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from integration.runtime.conftest import build_static_image
from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.model.gpu import Inventory
from nodeagent.settings import Settings, replace
from tests.support import wait_until

REPO = Path(__file__).parents[2]
NODE_PATH = "/api/v1/nodes/{}"


def host_network_pod(name: str, *, runtime_class: str | None = None, image: str = PAUSE_IMAGE) -> dict[str, Any]:
    """A pod of the image built here (never pulled), on the host's network, without a token mounted."""
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 5,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never"}],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def pod(api: Api, name: str, namespace: str = "default") -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return doc


def wait_pod(cluster: Cluster, name: str, what: str, check: Any, timeout_s: float = 90) -> dict[str, Any]:
    """Wait until ``check(pod)`` holds; the failure shows the pod's status and the kubelet's last lines."""
    seen: dict[str, Any] = {}

    def ready() -> bool:
        doc = pod(cluster.admin, name)
        seen["pod"] = doc
        return bool(doc is not None and check(doc))

    try:
        wait_until(ready, timeout_s=timeout_s, what=f"pod {name} {what}", step_s=0.3)
    except BaseException:
        status = (seen.get("pod") or {}).get("status")
        print(f"pod {name} status: {status}\nkubelet:\n{cluster.tail('kubelet')}")
        raise
    return seen["pod"]


def delete_pod(cluster: Cluster, name: str) -> None:
    try:
        cluster.admin.call("DELETE", f"/api/v1/namespaces/default/pods/{name}", {"gracePeriodSeconds": 0})
    except ApiError as err:
        if err.status != 404:
            raise
    wait_until(lambda: pod(cluster.admin, name) is None, timeout_s=60, what=f"pod {name} deleted", step_s=0.3)


def container_waiting_message(doc: dict[str, Any]) -> str:
    """What the kubelet says about a pod that does not start (its events carry the runtime's error)."""
    parts = []
    for c in doc.get("status", {}).get("containerStatuses", []) or []:
        waiting = c.get("state", {}).get("waiting") or {}
        parts.append(f"{waiting.get('reason', '')}: {waiting.get('message', '')}")
    return "; ".join(parts)


def events_for(api: Api, namespace: str, name: str) -> list[dict[str, Any]]:
    doc = api.get(f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}")
    items: list[dict[str, Any]] = doc.get("items", [])
    return items


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def agent_env(cluster: Cluster) -> dict[str, str]:
    return {
        "NODE_NAME": cluster.node_name,
        "NODEAGENT_KUBE__MODE": "kubeconfig",
        "NODEAGENT_KUBE__KUBECONFIG": "/etc/nodeagent/kubeconfig",
        "NODEAGENT_KUBE__NAMESPACE": "nodeagent",
        "NODEAGENT_LABELS__NODE_PATCH": "true",
        "NODEAGENT_LABELS__NODE_FEATURE": "true",
        "NODEAGENT_LABELS__RUNTIME_CLASSES": "true",
        "NODEAGENT_LABELS__START_JITTER_S": "0",
        "NODEAGENT_GPUHEALTH__TAINT": "true",
        "NODEAGENT_AGENT__LOG_LEVEL": "debug",
    }


def sandbox_with_kubeconfig(cluster: Cluster, tmp_path: Path, token: str) -> None:
    """Lay out the simulated node first (a non-empty root is left alone), then add the agent's kubeconfig."""
    root = tmp_path / "root"
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
    cluster.kubeconfig_for_token(root / "etc/nodeagent/kubeconfig", token)


def node(cluster: Cluster) -> dict[str, Any]:
    doc: dict[str, Any] = cluster.admin.get(NODE_PATH.format(cluster.node_name))
    return doc


def condition(doc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in doc["status"].get("conditions", []) if c["type"] == kind), None)


def restore_node(cluster: Cluster, before: dict[str, Any]) -> None:
    """Give the shared Node back as it was: the agent's labels, taints and condition go."""
    doc = node(cluster)
    labels = {k: None for k in doc["metadata"].get("labels", {}) if k not in before["metadata"].get("labels", {})}
    cluster.admin.merge_patch(
        NODE_PATH.format(cluster.node_name),
        {"metadata": {"labels": labels}, "spec": {"taints": before["spec"].get("taints")}},
    )
    kept = [c for c in doc["status"]["conditions"] if c["type"].startswith(("Memory", "Disk", "PID", "Ready"))]
    cluster.admin.merge_patch(NODE_PATH.format(cluster.node_name) + "/status", {"status": {"conditions": kept}})


def forbidden_lines(log: Path) -> list[str]:
    """The agent's log lines (at debug level, so best-effort writes count too) that mention a refusal."""
    found = []
    for line in log.read_text().splitlines():
        try:
            fields = json.loads(line)
        except ValueError:
            fields = {"line": line}
        fields.pop("timestamp", None)
        text = json.dumps(fields).lower()
        if re.search(r"\b403\b", text) or "forbidden" in text:
            found.append(line)
    return found


async def until_async(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll ``check`` (API state the test has no watch of) without blocking the loop the plugin runs on."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def failed_scheduling(api: Api, name: str, text: str, namespace: str = "default") -> bool:
    """Whether the scheduler said ``text`` in a FailedScheduling Event about the pod."""
    return any(
        e.get("reason") == "FailedScheduling" and text in e.get("message", "") for e in events_for(api, namespace, name)
    )


# ----------------------------------------------------------------------------------- the simulated GPU node

NODE_SPEC = "/var/run/cdi/nvidia.yaml"
"""The GPU node's CDI spec, in the node's own tree (``cluster.gpu_node``)."""
PROBE_IMAGE = "localhost/nodeagent/devprobe:test"
PROBE_C = r"""
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
static void list(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
    char path[300];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (lstat(path, &st) != 0) continue;
    if (S_ISCHR(st.st_mode)) printf("char %s %u:%u\n", path, major(st.st_rdev), minor(st.st_rdev));
    else printf("other %s\n", path);
  }
  if (d) closedir(d);
}
int main(void) {
  list("/dev", "nvidia");
  list("/dev/nvidia-caps", "nvidia-cap");
  printf("probe done\n");
  fflush(stdout);
  for (;;) pause();
}
"""
"""A static probe that lists its ``/dev/nvidia*`` and ``/dev/nvidia-caps/nvidia-cap*`` (with their numbers), prints
``probe done`` and waits."""
NOOP_HOOK = "#!/bin/sh\n# nvidia-cdi-hook's stand-in: the simulated node has no driver to link or cache\nexit 0\n"


def gpu_node_settings(cluster: Cluster, s: Settings) -> Settings:
    """``s`` with the GPU node's CDI settings: its spec (and so the DRA plugin's per-claim specs) in
    ``cluster.gpu_node``'s /var/run/cdi, as the agent on the cluster's root sees it; its hook and driver root."""
    node_dir = cluster.gpu_node
    spec = "/" + str((node_dir / NODE_SPEC.lstrip("/")).relative_to(cluster.base))
    hook = node_dir / "usr/bin/nvidia-cdi-hook"
    return replace(s, "cdi", spec_path=spec, hook_path=str(hook), driver_root_in_runtime=str(node_dir))


async def write_gpu_node(cluster: Cluster, inv: Inventory, s: Settings) -> None:
    """The GPU node's tree under ``cluster.gpu_node`` (driver files, the simulated device nodes' twins: character
    devices 1:3 under ``run/nodeagent/sim-dev``) and the CDI spec its CDI subsystem writes, naming those twins as
    each device node's ``hostPath``. ``s``: from :func:`gpu_node_settings`."""
    node_dir = cluster.gpu_node
    node_dir.mkdir()
    root = Root(node_dir)
    assert sandbox.populate_sandbox(root, inv)
    hook = Path(s.cdi.hook_path)
    hook.write_text(NOOP_HOOK)
    hook.chmod(0o755)
    await refresh_gpu_node(cluster, inv, s)
    assert cluster.base.joinpath(s.cdi.spec_path.lstrip("/")).is_file()


async def refresh_gpu_node(cluster: Cluster, inv: Inventory, s: Settings) -> None:
    """The GPU node after a change of ``inv`` (a MIG instance made or destroyed): its MIG capability files and
    device nodes' twins as the driver leaves them, and the CDI spec its CDI subsystem writes for ``inv``."""
    root = Root(cluster.gpu_node)
    sandbox.sync_mig_capabilities(root, inv)
    ctx = testing.context(root, replace(s, "cdi", spec_path=NODE_SPEC), inventory=inv, runtime_devices=True)
    cdi = CdiSubsystem(ctx)
    await cdi.apply(cdi.plan(await cdi.observe()))


def import_probe(cluster: Cluster) -> None:
    """Build the probe image and import it into the cluster's containerd."""
    assert cluster.containerd is not None
    archive = build_static_image(cluster.base, PROBE_C, "devprobe", PROBE_IMAGE)
    cluster.containerd.ctr("-n", "k8s.io", "images", "import", str(archive))


def probe_lines(cluster: Cluster, doc: dict[str, Any], container: str = "main") -> list[str] | None:
    """The probe's output lines from the kubelet's log of the pod's ``container``, once it has printed them all."""
    meta = doc["metadata"]
    logs = sorted(cluster.base.glob(f"var/log/pods/{meta['namespace']}_{meta['name']}_{meta['uid']}/{container}/*.log"))
    if not logs:
        return None
    lines = [line.split(" ", 3)[3] for line in logs[-1].read_text().splitlines() if line.count(" ") >= 3]
    return lines if "probe done" in lines else None


def probe_devices(lines: list[str]) -> dict[str, str]:
    """The probe's character devices: path → ``major:minor``."""
    return {line.split()[1]: line.split()[2] for line in lines if line.startswith("char ")}
