"""A test Kubernetes API server that enforces the rules the agent depends on.

It is the fast half of the Kubernetes-facing tests: the same tests also run against the real kube-apiserver of
integration/cluster (tests/kube/servers.py), and where the two disagreed the real one was followed. It
reproduces, over plain HTTP, the protocol rules of the real one for the resources the agent uses: Nodes (with
the ``status`` subresource), NodeFeatures (``nfd.k8s-sigs.io/v1alpha1``, a custom resource), RuntimeClasses
(``node.k8s.io/v1``), Events and Pods (read-only for the agent: it lists the GPU Operator's operand pods on
its node while a MIG change waits).

Rules enforced, each as the real API server answers them:

- every object has a ``resourceVersion`` from one global counter; an update or a patch carrying a stale
  ``metadata.resourceVersion`` gets 409 Conflict; a write that changes nothing stores nothing and keeps
  the resourceVersion; custom resources refuse an update without a resourceVersion (422);
- PATCH takes ``application/merge-patch+json``, ``application/strategic-merge-patch+json`` (not for custom
  resources) and ``application/json-patch+json``; any other content type gets 415 (server-side apply too,
  except that an apply without ``fieldManager`` gets the real 422 first); a strategic merge of a list by its
  merge key orders the result as apimachinery does (the patch's elements first, in its order, the others
  back at their stored places: a new condition comes first);
- label keys and values and annotation keys are validated as apimachinery does (422 Invalid with the
  field and the reason); names must be DNS subdomains; a RuntimeClass handler is a DNS label and immutable;
- Node status goes through the ``status`` subresource only: a write to the Node itself keeps the stored
  status, a write to ``nodes/status`` keeps the stored spec (labels and annotations it may change, as the
  real Node status strategy allows); conditions merge by ``type`` under a strategic merge patch; a
  condition's ``type`` and ``status`` are stored as sent (kube-apiserver 1.34 validates neither), its times
  must decode as RFC 3339 (422, cause ``patch``); Node taints need a qualified-name ``key``, an ``effect``
  of NoSchedule, PreferNoSchedule or NoExecute, and are unique per key and effect (422, fields
  ``metadata.taints[i]``, sic);
- authentication by bearer token from a kube-apiserver static token file (``token,user,uid,"g1,g2"``),
  re-read when it changes, so a rotated-out token gets 401;
- authorization by RBAC from a manifest (the project's ``container/kubernetes/rbac.yaml``), plus the node
  authorizer for ``system:node:<name>`` (another Node's update is refused with NodeRestriction's message);
  anything not granted gets 403 with the real message;
- list and watch with ``resourceVersion``, ``fieldSelector=metadata.name=...`` (Pods also ``spec.nodeName``,
  ``status.phase`` and the rest of the real set; another field gets 400 ``field label not supported``), equality
  ``labelSelector``, bookmarks (``allowWatchBookmarks``) and, for a resourceVersion older than the
  retained history, an ERROR event with a 410 Expired status (a list with ``resourceVersionMatch=Exact``
  gets 410 itself);
- a per-user token-bucket rate limit answering 429 with ``Retry-After``.

HTTPS with a server certificate is optional (``--tls-cert``; kubectl sends a token only over HTTPS). Not
reproduced: client-certificate authentication, server-side apply (415), generateName, admission plugins
other than the validation above. For tests it also counts requests and writes per user
and can be made unavailable (503 with Retry-After) or compacted on demand.

Standalone: ``python -m nodeagent.testing.apiserver --port 6443 --token-file tokens.csv --node NAME``.

By concern: ``resources`` (what is served, request targets, ``Status`` errors, discovery), ``auth`` (tokens,
rate limit; RBAC is ``testing.k8s_rbac``), ``store`` (objects, resourceVersions, history, selectors,
counters), ``watch`` (watches, bookmarks, 410), ``validate`` (422 rules), ``server`` (the pipeline, reads,
writes; patch semantics are ``testing.k8s_patch``), ``cli`` (standalone, TLS, kubeconfig).
"""

from nodeagent.testing.apiserver.auth import RateLimiter, TokenFile, parse_token_file
from nodeagent.testing.apiserver.cli import default_rbac_path, main, run_standalone, write_kubeconfig
from nodeagent.testing.apiserver.resources import (
    BY_PATH,
    JSON_PATCH,
    MERGE_PATCH,
    RESOURCES,
    STRATEGIC_MERGE_PATCH,
    ApiError,
    ResourceType,
    Target,
)
from nodeagent.testing.apiserver.server import TestApiServer
from nodeagent.testing.apiserver.store import Counters, Store

__all__ = [
    "BY_PATH",
    "JSON_PATCH",
    "MERGE_PATCH",
    "RESOURCES",
    "STRATEGIC_MERGE_PATCH",
    "ApiError",
    "Counters",
    "RateLimiter",
    "ResourceType",
    "Store",
    "Target",
    "TestApiServer",
    "TokenFile",
    "default_rbac_path",
    "main",
    "parse_token_file",
    "run_standalone",
    "write_kubeconfig",
]
