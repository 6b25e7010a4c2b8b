"""docs/migration.md and docs/threat-model.md: their commands work as written, as far as they can run here.

No cluster runs here, so the kubectl commands that talk to an API server are checked for what can be
checked offline: the paths `kubectl kustomize` renders, the nodeagent command lines (parsed by the
agent's own parser), the operator's per-node operand labels, and the ClusterPolicy patch (valid JSON
naming real operands). The threat model's claims each name a test; every named test must exist.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from nodeagent.cli import make_parser

from .kube import OVERLAY_DIR, OVERLAYS, render

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
MIGRATION = REPO / "docs/migration.md"
THREAT_MODEL = REPO / "docs/threat-model.md"
# GPU Operator per-node switches (nvidia.com/gpu.deploy.<operand>) and ClusterPolicy spec keys.
OPERATOR_DEPLOY_LABELS = {
    "driver",
    "container-toolkit",
    "dcgm",
    "dcgm-exporter",
    "gpu-feature-discovery",
    "mig-manager",
    "operator-validator",
    "device-plugin",
}
SUBCOMMANDS = {"run", "plan", "apply", "revert", "status", "cdi", "sim"}
CLUSTERPOLICY_OPERANDS = {"driver", "toolkit", "dcgm", "dcgmExporter", "gfd", "migManager", "devicePlugin"}


def command_lines(markdown: str) -> list[str]:
    """Shell lines of the fenced blocks (continuations joined) and of inline code spans."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    lines += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", markdown)
    return lines


def nodeagent_argv(line: str) -> list[str] | None:
    for part in re.split(r"&&|;|\|", line):
        words = shlex.split(part)
        for i, word in enumerate(words):
            follows = words[i + 1] if i + 1 < len(words) else ""
            if word == "nodeagent" and (i == 0 or words[i - 1] == "-m") and follows in SUBCOMMANDS:
                return words[i + 1 :]
    return None


def test_every_nodeagent_command_in_the_docs_parses() -> None:
    found = []
    for doc in (MIGRATION, THREAT_MODEL):
        for line in command_lines(doc.read_text()):
            argv = nodeagent_argv(line)
            if argv is not None:
                make_parser().parse_args(argv)  # exits 2 (SystemExit) on an unknown flag
                found.append(argv[0])
    assert {"revert", "status"} <= set(found), found


def test_kustomize_commands_and_overlays_named_in_the_guide_render() -> None:
    text = MIGRATION.read_text()
    paths = re.findall(r"kubectl kustomize (\S+)", text)
    assert paths
    for path in paths:
        assert render(REPO / path)
    named = set(re.findall(r"`(kubeadm|k0s|k3s|rke2|microk8s|gke)`", text))
    assert named == set(OVERLAYS) and all((OVERLAY_DIR / n).is_dir() for n in named)


def test_operator_switches_in_the_guide_are_real_operands() -> None:
    lines = command_lines(MIGRATION.read_text())
    labels = {m for line in lines for m in re.findall(r"nvidia\.com/gpu\.deploy\.([a-z-]+)=false", line)}
    assert labels == OPERATOR_DEPLOY_LABELS - {"device-plugin"}, labels  # the device plugin stays
    (patch,) = [line for line in lines if line.startswith("kubectl patch clusterpolicies")]
    payload = json.loads(shlex.split(patch)[-1])
    assert set(payload["spec"]) <= CLUSTERPOLICY_OPERANDS
    assert all(value == {"enabled": False} for value in payload["spec"].values())


def test_every_test_the_threat_model_names_exists() -> None:
    refs = re.findall(r"`([\w/]+\.py)::(test_\w+)`", THREAT_MODEL.read_text())
    assert len(refs) >= 20, refs
    missing = []
    for path, name in refs:
        source = REPO / path
        if not source.is_file() or not re.search(rf"^(async )?def {name}\(", source.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert not missing, missing
