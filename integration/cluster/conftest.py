"""Fixtures of the cluster tests. The session's cluster itself (``cluster``, ``agent_token``) is the plugin
integration/cluster/plugin.py, shared with the ``real`` half of the Kubernetes-facing unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.cluster.cluster import Cluster
from integration.cluster.support import node, restore_node


@pytest.fixture
def node_restored(cluster: Cluster) -> Iterator[None]:
    before = node(cluster)
    yield
    restore_node(cluster, before)
