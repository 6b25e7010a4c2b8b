"""The real single-node cluster (integration/cluster/cluster.py), one per test session.

Skipped where it cannot run (not root, no containerd, no Go toolchain and no cached binary), failed
instead under NODEAGENT_REQUIRE_INTEGRATION=1, like every integration prerequisite; a build or start
failure says which component and ends with its last log lines.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from integration.cluster.cluster import Cluster, ClusterError, build_kubebin, start_cluster
from integration.runtime.conftest import need_root_and
from tests.support import require


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    need_root_and("containerd", "ctr", "runc", "gcc", "openssl", "unshare", "nsenter")
    try:
        kubebin = build_kubebin()
    except ClusterError as err:
        require(shutil.which("go") is not None, f"no Go toolchain to build the cluster's binaries ({err})")
        require(False, f"the cluster's binaries did not build: {err}")
        raise
    try:
        running = start_cluster(kubebin)
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
