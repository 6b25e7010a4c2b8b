"""Where the agent's Kubernetes credentials come from: the pod's service account, or a kubeconfig.

- In cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT``, and the projected service-account volume (token,
  ``ca.crt``, ``namespace``). The kubelet rotates the token file (hourly by default); the token is
  re-read whenever the file changes, so a rotated token is used on the next request.
- A kubeconfig (``~/.kube/config`` style, or the kubelet's own ``/etc/kubernetes/kubelet.conf`` on bare
  metal): the current (or named) context's cluster and user; a token, a token file, or a client
  certificate and key, each as a file or as base64 ``-data``. File paths are relative to the kubeconfig.
  The kubelet's client certificate rotates too (``kubelet-client-current.pem``); the TLS context is
  rebuilt when the certificate file changes.

Bad input raises ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeagent.errors import ConfigError

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class _FileToken:
    """A token file re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        try:
            st = self.path.stat()
        except OSError as err:
            raise ConfigError(f"cannot read the token: {err.strerror}", source=str(self.path)) from err
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._token = self.path.read_text(encoding="utf-8").strip()
            self._stamp = stamp
        return self._token


@dataclass
class Credentials:
    server: str
    """https://host:port (http:// for the test API server)."""
    token: Callable[[], str] | None = None
    """Returns the current bearer token (re-reading a rotated file); None for certificate auth."""
    namespace: str = "default"
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    insecure: bool = False
    source: str = ""
    """Where these came from, for status and errors."""
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)
    _cert_stamp: tuple[int, int] | None = field(default=None, repr=False)

    def bearer(self) -> str | None:
        return self.token() if self.token is not None else None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS context (rebuilt when the client certificate file changed); True for plain http."""
        if not self.server.startswith("https://"):
            return True
        stamp = None
        if self.cert_file:
            try:
                st = Path(self.cert_file).stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError as err:
                raise ConfigError(f"cannot read the client certificate: {err.strerror}", source=self.cert_file) from err
        if self._ssl is None or stamp != self._cert_stamp:
            self._ssl = self._build_ssl()
            self._cert_stamp = stamp
        return self._ssl

    def _build_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=self.ca_file, cadata=self.ca_data.decode("ascii") if self.ca_data else None
        )
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_data and self.key_data:
            _load_chain_from_data(ctx, self.cert_data, self.key_data)
        return ctx


def _load_chain_from_data(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a certificate chain only from files: write both to a private temp dir, load, delete."""
    with tempfile.TemporaryDirectory(prefix="nodeagent-kube-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(str(cert_path), str(key_path))


def in_cluster(env: Mapping[str, str] | None = None, sa_dir: str = SERVICE_ACCOUNT_DIR) -> Credentials:
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set",
            source="environment",
        )
    base = Path(sa_dir)
    token_path = base / "token"
    if not token_path.is_file():
        raise ConfigError("service account token not mounted", source=str(token_path))
    namespace_path = base / "namespace"
    namespace = namespace_path.read_text(encoding="utf-8").strip() if namespace_path.is_file() else "default"
    ca = base / "ca.crt"
    server_host = f"[{host}]" if ":" in host else host
    return Credentials(
        server=f"https://{server_host}:{port}",
        token=_FileToken(token_path),
        namespace=namespace,
        ca_file=str(ca) if ca.is_file() else None,
        source=f"service account ({sa_dir})",
    )


def _b64(value: Any, source: str, key: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as err:
        raise ConfigError("is not valid base64", source=source, key=key) from err


def _named(items: Any, name: str, kind: str, source: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(kind)
            if not isinstance(body, dict):
                raise ConfigError(f"{kind} {name!r} has no {kind} section", source=source, key=f"{kind}s")
            return body
    raise ConfigError(f"no {kind} named {name!r}", source=source, key=f"{kind}s")


def from_kubeconfig(
    path: str | Path,
    *,
    context: str = "",
    resolve: Callable[[str], Path] = Path,
) -> Credentials:
    """Credentials from a kubeconfig. ``resolve`` maps a host path to a local one (the agent's Root)."""
    config_path = resolve(str(path))
    source = str(path)
    try:
        doc = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read the kubeconfig: {err.strerror}", source=source) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", source=source) from err
    if not isinstance(doc, dict):
        raise ConfigError("a kubeconfig must be a mapping", source=source)
    name = context or doc.get("current-context") or ""
    if not name:
        raise ConfigError("no current-context and no context given", source=source, key="current-context")
    ctx = _named(doc.get("contexts"), name, "context", source)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", source)
    user = _named(doc.get("users"), ctx.get("user", ""), "user", source) if ctx.get("user") else {}
    base = Path(str(path)).parent

    def host_file(value: Any) -> str:
        p = Path(str(value))
        return str(resolve(str(p if p.is_absolute() else base / p)))

    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise ConfigError("must be an http(s) URL", source=source, key=f"clusters[{ctx.get('cluster')}].server")
    creds = Credentials(server=server.rstrip("/"), namespace=ctx.get("namespace") or "default", source=source)
    if "certificate-authority-data" in cluster:
        creds.ca_data = _b64(cluster["certificate-authority-data"], source, "certificate-authority-data")
    elif "certificate-authority" in cluster:
        creds.ca_file = host_file(cluster["certificate-authority"])
    creds.insecure = bool(cluster.get("insecure-skip-tls-verify", False))
    if "token" in user:
        token = str(user["token"])
        creds.token = lambda: token
    elif "tokenFile" in user:
        creds.token = _FileToken(Path(host_file(user["tokenFile"])))
    if "client-certificate-data" in user:
        creds.cert_data = _b64(user["client-certificate-data"], source, "client-certificate-data")
    elif "client-certificate" in user:
        creds.cert_file = host_file(user["client-certificate"])
    if "client-key-data" in user:
        creds.key_data = _b64(user["client-key-data"], source, "client-key-data")
    elif "client-key" in user:
        creds.key_file = host_file(user["client-key"])
    has_cert = bool((creds.cert_file or creds.cert_data) and (creds.key_file or creds.key_data))
    if creds.token is None and not has_cert:
        raise ConfigError(
            f"user {ctx.get('user')!r} has neither a token nor a client certificate and key",
            source=source,
            key="users",
        )
    return creds
