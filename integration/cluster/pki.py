"""The test cluster's certificates and keys, made with openssl in the cluster's temporary directory.

One CA signs everything: the API server's serving certificate (127.0.0.1, localhost and the in-cluster
names), a client certificate per component (the Node authorizer knows the kubelet by its
``system:node:NAME`` / ``system:nodes`` subject) and the admin's (``system:masters``). The ServiceAccount
tokens are signed by their own EC key. Every certificate lives two days: a test run is far shorter.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: KeyPair
    apiserver: KeyPair
    apiserver_kubelet_client: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kubelet: KeyPair
    sa_key: Path
    sa_pub: Path


def _leaf(d: Path, ca: KeyPair, name: str, subject: str, usage: str, san: str = "") -> KeyPair:
    pair = KeyPair(d / f"{name}.crt", d / f"{name}.key")
    ext = d / f"{name}.ext"
    lines = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    csr = d / f"{name}.csr"
    _openssl("req", "-new", *_EC, "-keyout", str(pair.key), "-out", str(csr), "-subj", subject, cwd=d)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-days", "2", "-out", str(pair.cert), "-extfile", str(ext), cwd=d,
    )  # fmt: skip
    return pair


def make_pki(d: Path, node_name: str) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = KeyPair(d / "ca.crt", d / "ca.key")
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2",
        "-subj", "/CN=nodeagent-test-cluster-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )  # fmt: skip
    serving_names = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(sa_key), cwd=d)
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=d)
    return Pki(
        dir=d,
        ca=ca,
        apiserver=_leaf(d, ca, "apiserver", "/CN=kube-apiserver", "serverAuth", serving_names),
        apiserver_kubelet_client=_leaf(
            d, ca, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth"
        ),
        admin=_leaf(d, ca, "admin", "/O=system:masters/CN=nodeagent-test-admin", "clientAuth"),
        controller_manager=_leaf(d, ca, "controller-manager", "/CN=system:kube-controller-manager", "clientAuth"),
        scheduler=_leaf(d, ca, "scheduler", "/CN=system:kube-scheduler", "clientAuth"),
        kubelet=_leaf(d, ca, "kubelet", f"/O=system:nodes/CN=system:node:{node_name}", "clientAuth"),
        sa_key=sa_key,
        sa_pub=sa_pub,
    )


def client_cert(pki: Pki, name: str, subject: str) -> KeyPair:
    """One more client certificate from the cluster's CA (``subject`` as openssl writes it: /O=group/CN=user)."""
    return _leaf(pki.dir, pki.ca, f"client-{name}", subject, "clientAuth")
