"""The test API server standalone (``python -m nodeagent.testing.apiserver``): its command line, HTTPS with a
given certificate (``--tls-cert``/``--tls-key``), and a kubeconfig written for a token (``write_kubeconfig``)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nodeagent.testing.apiserver.auth import parse_token_file
from nodeagent.testing.apiserver.server import TestApiServer


def write_kubeconfig(
    path: str | Path, server: str, token: str, namespace: str = "nodeagent", ca_pem: bytes | None = None
) -> None:
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "nodeagent", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "nodeagent", "namespace": namespace}}],
        "current-context": "test",
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def default_rbac_path() -> Path | None:
    """The project's RBAC manifest when running from a checkout."""
    candidate = Path(__file__).resolve().parents[3] / "container" / "kubernetes" / "rbac.yaml"
    return candidate if candidate.is_file() else None


async def run_standalone(args: argparse.Namespace) -> None:
    rbac = args.rbac or default_rbac_path()
    server = TestApiServer(
        token_file=args.token_file,
        rbac=rbac,
        qps=args.qps,
        burst=args.burst,
        bookmark_interval_s=args.bookmark_interval,
    )
    for node in args.node:
        server.add_node(node)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key or None)
    url = await server.start(args.host, args.port, tls=tls)
    if args.kubeconfig_out:
        users = parse_token_file(Path(args.token_file).read_text(encoding="utf-8"), args.token_file)
        token = next(iter(users), "")
        ca = Path(args.tls_cert).read_bytes() if args.tls_cert else None
        write_kubeconfig(args.kubeconfig_out, url, token, ca_pem=ca)
    print(f"test API server on {url} (rbac {rbac or 'none'}, nodes {', '.join(args.node) or 'none'})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nodeagent.testing.apiserver",
        description="A test Kubernetes API server that enforces the rules the agent depends on.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--token-file", required=True, help='static token file: token,user,uid,"group1,group2"')
    parser.add_argument("--rbac", default=None, help="RBAC manifest (default: the project's rbac.yaml)")
    parser.add_argument("--node", action="append", default=[], help="create this Node at start (repeatable)")
    parser.add_argument("--qps", type=float, default=0.0, help="per-user rate limit (0: none)")
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="its private key (PEM)")
    parser.add_argument("--kubeconfig-out", default="", help="write a kubeconfig for the first token here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not Path(args.token_file).exists():
        parser.error(f"--token-file {args.token_file}: no such file")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_standalone(args))
