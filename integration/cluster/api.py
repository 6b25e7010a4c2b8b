"""A small synchronous REST client for the tests' own calls to the real API server (setup and assertions).

It is deliberately not the agent's client (nodeagent.kube.client): the tests check the agent's requests
through what the server stored, so they must not share its code.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path}: {status} {body}")
        self.status = status
        self.body = body


@dataclass
class Api:
    url: str
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None and self.key is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 15,
    ) -> Any:
        """The decoded JSON answer (text for a non-JSON one); ApiError for any status >= 400."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl()) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                detail: Any = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ApiError(method, path, err.code, detail) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def status(self, method: str, path: str, body: Any = None) -> int:
        """Only the status code (200 for success): for the checks that expect a refusal."""
        try:
            self.call(method, path, body)
        except ApiError as err:
            return err.status
        return 200

    def as_token(self, token: str) -> Api:
        return Api(self.url, self.ca, token=token)


# Where each kind of object of the manifests the tests apply is created.
_COLLECTIONS = {
    ("v1", "Namespace"): "/api/v1/namespaces",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    ("rbac.authorization.k8s.io/v1", "Role"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    ("resource.k8s.io/v1", "DeviceClass"): "/apis/resource.k8s.io/v1/deviceclasses",
    ("resource.k8s.io/v1", "ResourceClaim"): "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates",
}


def create_all(api: Api, docs: list[dict[str, Any]]) -> None:
    """Create each object (what `kubectl create -f` does for these kinds); an existing one is kept."""
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key not in _COLLECTIONS:
            raise ValueError(f"no collection known for {key}")
        path = _COLLECTIONS[key].format(ns=doc["metadata"].get("namespace", "default"))
        try:
            api.post(path, doc)
        except ApiError as err:
            if err.status != 409:
                raise
