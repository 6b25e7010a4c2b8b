"""The session's real single-node cluster (integration/cluster/cluster.py) as a pytest plugin, loaded by the
root conftest, so that every suite of ``pytest tests integration`` shares ONE cluster: the cluster tests
under integration/cluster and the ``real`` half of the Kubernetes-facing unit tests (tests/kube/servers.py).

Skipped where it cannot run (not root, no runc, no Go toolchain and no cached binaries: kubebin and the
cluster's containerd, both built from their Go modules), failed
instead under NODEAGENT_REQUIRE_INTEGRATION=1, like every integration prerequisite; a build or start
failure says which component and ends with its last log lines. A start that failed once is not retried
by the next test of the session (pytest caches the failed session fixture).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.cluster.api import ApiError, create_all
from integration.cluster.cluster import Cluster, ClusterError, build_containerd, build_kubebin, start_cluster
from integration.cluster.server_under_test import RealIdentities
from integration.cluster.support import REPO, load
from integration.runtime.conftest import need_root_and
from tests.support import require, wait_until


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    need_root_and("runc", "gcc", "openssl", "unshare", "nsenter")
    try:
        kubebin = build_kubebin()
        containerd_bin = build_containerd()
    except ClusterError as err:
        require(shutil.which("go") is not None, f"no Go toolchain to build the cluster's binaries ({err})")
        require(False, f"the cluster's binaries did not build: {err}")
        raise
    try:
        running = start_cluster(kubebin, containerd_bin)
    except ClusterError as err:
        require(False, f"the test cluster did not start: {err}")
        raise
    try:
        yield running
    finally:
        if os.environ.get("NODEAGENT_KEEP_CLUSTER") == "1":
            pids = {name: p.proc.pid for name, p in running.processes.items()}
            if running.holder is not None:
                pids["namespace"] = running.holder.proc.pid
            if running.containerd is not None:
                pids["containerd"] = running.containerd.pid() or 0
            print(f"\nNODEAGENT_KEEP_CLUSTER=1: left in {running.base}, pids {pids}")
        else:
            running.stop()


@pytest.fixture(scope="session")
def agent_token(cluster: Cluster) -> str:
    """rbac.yaml and NFD's NodeFeature CRD applied; a token of the agent's ServiceAccount (TokenRequest)."""
    create_all(cluster.admin, load(REPO / "container/kubernetes/rbac.yaml"))
    create_all(cluster.admin, load(Path(__file__).parent / "manifests/nodefeature-crd.yaml"))
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodefeatures.nfd.k8s-sigs.io"

    def established() -> bool:
        conditions = (cluster.admin.get(crd).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until(established, timeout_s=30, what="the NodeFeature CRD established")

    def served() -> bool:  # established is not yet served: a list answers 429 "storage is (re)initializing"
        try:
            cluster.admin.get("/apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures")
        except ApiError as err:
            if err.status != 429:
                raise
            return False
        return True

    wait_until(served, timeout_s=30, what="NodeFeatures served", step_s=0.2)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}}
    answer = cluster.admin.post("/api/v1/namespaces/nodeagent/serviceaccounts/nodeagent/token", request)
    token: str = answer["status"]["token"]
    return token


@pytest.fixture(scope="session")
def real_identities(cluster: Cluster, agent_token: str) -> RealIdentities:
    """The identities the Kubernetes-facing unit tests use on the real server (tests/kube/servers.py)."""
    return RealIdentities.make(cluster, agent_token)
