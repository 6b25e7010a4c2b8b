"""Render the kustomize base and overlays with `kubectl kustomize` (offline) and pick objects out of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import require

REPO = Path(__file__).parents[2]
BASE = REPO / "container/kubernetes"
OVERLAY_DIR = REPO / "container/overlays"
COMPONENT_DIR = REPO / "container/components"
OVERLAYS = sorted(p.name for p in OVERLAY_DIR.iterdir() if (p / "kustomization.yaml").is_file())
NFD_NVIDIA_PCI = "feature.node.kubernetes.io/pci-10de.present"

Doc = dict[str, Any]


def render(kustomization_dir: Path) -> list[Doc]:
    require(shutil.which("kubectl") is not None, "kubectl is not installed (its `kustomize` renders offline)")
    done = subprocess.run(
        ["kubectl", "kustomize", str(kustomization_dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {kustomization_dir}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[Doc], kind: str, name: str = "nodeagent") -> Doc:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{len(hits)} {kind}/{name} in {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return hits[0]


def agent_container(docs: list[Doc]) -> Doc:
    containers = find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    (container,) = (c for c in containers if c["name"] == "nodeagent")
    return dict(container)


def literal_env(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in the binary units the manifests use (Ki, Mi, Gi)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)
