"""The test API server as its own process (what `make run KUBE=test` starts), over HTTPS, checked with the
agent's client and, where kubectl is installed, with kubectl."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.kube.client import KubeClient
from nodeagent.kube.credentials import from_kubeconfig
from nodeagent.kube.resources import NODES
from nodeagent.testing.apiserver import parse_token_file
from tests.kube.kube_support import REPO, TOKENS
from tests.support import free_port, require


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Path]:
    """Start the server with a self-signed certificate; yield the kubeconfig it wrote; stop it by pid."""
    require(shutil.which("openssl") is not None, "openssl is needed to make a test certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "tokens.csv").write_text(TOKENS.split("\n", 1)[1] + TOKENS.split("\n", 1)[0] + "\n")
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodeagent.testing.apiserver",
            "--port",
            str(free_port()),
            "--token-file",
            str(tmp_path / "tokens.csv"),
            "--node",
            "node-a",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--kubeconfig-out",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("test API server on https://"), line
        yield kubeconfig
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_agent_client_over_https_with_the_written_kubeconfig(standalone: Path) -> None:
    creds = from_kubeconfig(standalone)
    assert creds.server.startswith("https://") and creds.ca_data
    async with KubeClient(creds) as client:
        node = await client.get(NODES, "node-a")
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-a"


def test_kubectl_reads_and_labels_nodes(standalone: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (an optional cross-check of the answers' shape)")
    kubectl = ["kubectl", "--kubeconfig", str(standalone)]
    out = subprocess.run([*kubectl, "get", "nodes", "-o", "json"], check=True, capture_output=True, text=True)
    assert [n["metadata"]["name"] for n in json.loads(out.stdout)["items"]] == ["node-a"]
    subprocess.run(
        [*kubectl, "label", "node", "node-a", "nvidia.com/gpu.present=true"], check=True, capture_output=True
    )
    patch = '{"metadata": {"labels": {"nvidia.com/x": "-bad"}}}'  # kubectl label would refuse it itself
    bad = subprocess.run(
        [*kubectl, "patch", "node", "node-a", "--type", "merge", "-p", patch],
        check=False,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and 'The Node "node-a" is invalid: metadata.labels: Invalid value: "-bad"' in bad.stderr
    out = subprocess.run([*kubectl, "get", "node", "node-a", "-o", "json"], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"


def test_token_file_errors_name_the_file_and_line() -> None:
    with pytest.raises(ValueError, match=r"tokens.csv:2: expected token,user,uid"):
        parse_token_file("a,b,c\nonly-a-token\n", "tokens.csv")
