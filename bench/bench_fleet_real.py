"""Fleet load on the real API server: N simulated nodes' labels subsystems against kube-apiserver and etcd.

The control plane is the one the cluster tests build from Go modules (``integration/cluster``: the pinned
Kubernetes release, cached under ``~/.cache/nodeagent/kubebin``); only etcd and kube-apiserver run (no
kubelet, so no root needed). N Node objects are created, and N agent-equivalents (a real
``LabelsSubsystem`` on its own Node gateway and Kubernetes client, with the agent's ServiceAccount token
under ``rbac.yaml``) run in this one process, as ``bench_fleet`` does against the test API server.

Measured from the API server's own audit log (every request of the agent's ServiceAccount) and its
``/proc`` CPU times and ``/metrics``:

1. startup: write requests per node and their spread;
2. converged: writes per minute (goal 0), requests per node per hour (the watch and resync periods are
   shortened so both recur inside the window; each kind of request is scaled back to the default periods),
   kube-apiserver and etcd CPU seconds, and open watches on nodes;
3. CPU per 1000 nodes per hour at the default periods, estimated as the idle cost of N stored Nodes and their
   open watches plus the measured cost per request times the default request rate;
4. a MIG change on some agents: time from the event to the new label on their Node.

``NODEAGENT_FLEET_NODES`` sets N (default 500).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, table
from bench.bench_fleet import (
    CHANGED_AGENTS,
    RESYNC_SPEEDUP,
    START_JITTER_S,
    WATCH_SPEEDUP,
    Agent,
    inventories,
    max_per_second,
    node_name,
)
from integration.cluster.api import Api, create_all
from integration.cluster.cluster import Cluster, ClusterError, build_kubebin, versions
from integration.cluster.support import REPO, load
from nodeagent import events, logs
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.kube.factory import make_client
from nodeagent.nodegateway import NodeGateway
from nodeagent.settings import KubeSettings, Settings
from nodeagent.subsystem import Phase

NODES = int(os.environ.get("NODEAGENT_FLEET_NODES", "500"))
WINDOW_S = 60.0
IDLE_S = 20.0
WRITES = ("create", "update", "patch", "delete")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Audit:
    """The audit log read incrementally: the agents' requests (one line per request)."""

    path: Path
    offset: int = 0

    def new_requests(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            entry = json.loads(line)
            stage = "ResponseStarted" if entry.get("verb") == "watch" else "ResponseComplete"
            if entry.get("stage") == stage:
                out.append(entry)
        return out


def watches_on_nodes(admin: Api) -> int:
    text = admin.get("/metrics")
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'resource="nodes"' in line and 'verb="WATCH"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def agent_token(cluster: Cluster) -> str:
    create_all(cluster.admin, load(REPO / "container/kubernetes/rbac.yaml"))
    create_all(cluster.admin, load(REPO / "integration/cluster/manifests/nodefeature-crd.yaml"))
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodefeatures.nfd.k8s-sigs.io"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = (cluster.admin.get(crd).get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            break
        time.sleep(0.2)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}}
    answer = cluster.admin.post("/api/v1/namespaces/nodeagent/serviceaccounts/nodeagent/token", request)
    return str(answer["status"]["token"])


def create_nodes(admin: Api, count: int) -> None:
    for i in range(count):
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name(i), "labels": {"fleet": "bench"}}}
        admin.post("/api/v1/nodes", body)


class Plane:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.apiserver = cluster.processes["kube-apiserver"].proc.pid
        self.etcd = cluster.processes["etcd"].proc.pid

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.apiserver), cpu_seconds(self.etcd)


async def run(cluster: Cluster, tmp: Path) -> list[list[object]]:
    admin = cluster.admin
    token = agent_token(cluster)
    kubeconfig = cluster.kubeconfig_for_token(tmp / "kubeconfig", token)
    started = time.monotonic()
    create_nodes(admin, NODES)
    created_s = time.monotonic() - started
    plane = Plane(cluster)
    audit = Audit(cluster.audit_log)
    audit.new_requests()

    a0, e0 = plane.cpu()
    await asyncio.sleep(IDLE_S)
    a1, e1 = plane.cpu()
    idle_api, idle_etcd = (a1 - a0) / IDLE_S, (e1 - e0) / IDLE_S

    inventory, changed = await inventories()
    backend = SimGpuBackend("h100-80gb-hbm3", count=1)
    resync_s = max(10.0, Settings().labels.resync_s / RESYNC_SPEEDUP)
    settings = KubeSettings(mode="kubeconfig", kubeconfig=str(kubeconfig), namespace="nodeagent")
    agents = []
    for i in range(NODES):
        client = make_client(settings)
        assert client is not None
        agents.append(Agent(i, client, tmp / "root", backend, resync_s))
    try:
        return await measure(plane, audit, agents, inventory, changed, resync_s, created_s, idle_api, idle_etcd)
    finally:
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
        await backend.close()


async def measure(
    plane: Plane,
    audit: Audit,
    agents: list[Agent],
    inventory: Any,
    changed: Any,
    resync_s: float,
    created_s: float,
    idle_api: float,
    idle_etcd: float,
) -> list[list[object]]:
    admin = plane.cluster.admin
    t0 = time.time()
    start = time.monotonic()
    await asyncio.gather(*(a.start(inventory) for a in agents))

    def converged(a: Agent) -> bool:
        status = a.sub.status()
        return status.phase == Phase.RUNNING and status.details.get("first_api_writes_in_s") == 0

    while not all(converged(a) for a in agents):
        await asyncio.sleep(0.2)
    converged_s = time.monotonic() - start
    await asyncio.sleep(2)  # the last responses reach the audit log
    startup = audit.new_requests()
    writes = [e for e in startup if e["verb"] in WRITES]
    times = [_stamp(e) - t0 for e in writes]
    answers: dict[str, int] = {}
    for e in startup:
        code = e["responseStatus"]["code"]
        if code >= 400:
            ref = e.get("objectRef", {})
            key = f"{e['verb']} {ref.get('resource', '')} {code}"
            answers[key] = answers.get(key, 0) + 1
    # A 404 to a get is a lookup (does the NodeFeature exist yet?), a 409 a lost race, a 429 the API server's
    # priority and fairness (every agent is the one ServiceAccount: one flow): the client retries both.
    expected = (" 409", " 429")
    refused = {
        k: n for k, n in answers.items() if not (k.endswith(expected) or (k.startswith("get ") and k.endswith(" 404")))
    }

    a0, e0 = plane.cpu()
    await asyncio.sleep(WINDOW_S)
    a1, e1 = plane.cpu()
    window = audit.new_requests()
    watches = watches_on_nodes(admin)
    window_writes = sum(1 for e in window if e["verb"] in WRITES)
    watch_list = sum(1 for e in window if e["verb"] in ("watch", "list"))
    gets = sum(1 for e in window if e["verb"] == "get")
    hour = 3600 / WINDOW_S / NODES
    default_rate = watch_list * hour / WATCH_SPEEDUP + gets * hour / RESYNC_SPEEDUP
    api_s, etcd_s = a1 - a0, e1 - e0
    requests = max(1, len(window))
    per_request = max(0.0, api_s - idle_api * WINDOW_S) / requests
    estimate = (idle_api * 3600 + per_request * default_rate * NODES) * 1000 / NODES
    watch_s = agents[0].sub.ctx.node.watch_timeout_s

    rows: list[list[object]] = [
        ["nodes (Node objects, one agent-equivalent each)", NODES, f"created in {created_s:.1f} s"],
        ["API server idle with the Nodes stored, before the agents", f"{idle_api * 3600:.0f} CPU s/h", ""],
        ["startup: all converged after", f"{converged_s:.1f} s", f"start jitter {START_JITTER_S:g} s"],
        ["startup: write requests per node", f"{len(writes) / NODES:.2f}", "bounded: about 3"],
        [
            "startup: write requests by verb and resource",
            ", ".join(f"{k} {n}" for k, n in sorted(_by_kind(writes).items())),
            "",
        ],
        ["startup: writes spread over", f"{max(times, default=0) - min(times, default=0):.1f} s", ""],
        ["startup: most writes in one second", max_per_second(times), ""],
        [
            "startup: answers >= 400 by verb, resource and code",
            ", ".join(f"{k}: {n}" for k, n in sorted(answers.items())) or "none",
            "404 to a get: a lookup; 409: a race; 429: flow control; both retried",
        ],
        ["startup: refused requests (any other)", sum(refused.values()), "0"],
        [f"converged: writes per minute ({WINDOW_S:g} s window)", f"{window_writes * 60 / WINDOW_S:.1f}", "0"],
        [
            "converged: requests per node per hour, shortened periods",
            f"{len(window) * hour:.0f} ({watch_list * hour:.0f} watch/list, {gets * hour:.0f} get)",
            f"watch {watch_s}-{2 * watch_s} s, resync {resync_s:g} s",
        ],
        [
            "converged: requests per node per hour, default periods",
            f"{default_rate:.1f}",
            f"watch {NodeGateway.watch_timeout_s}-{2 * NodeGateway.watch_timeout_s} s, "
            f"resync {Settings().labels.resync_s:g} s",
        ],
        ["converged: open watches on nodes (apiserver_longrunning_requests)", watches, f"{NODES} (one per agent)"],
        [
            "converged: kube-apiserver CPU, shortened periods",
            f"{api_s / WINDOW_S * 3600 * 1000 / NODES:.0f} CPU s per 1000 nodes per hour",
            f"{api_s:.1f} s in {WINDOW_S:g} s",
        ],
        [
            "converged: etcd CPU, shortened periods",
            f"{etcd_s / WINDOW_S * 3600 * 1000 / NODES:.0f} CPU s per 1000 nodes per hour",
            f"idle {idle_etcd * 3600:.0f} CPU s/h",
        ],
        [
            "kube-apiserver CPU per 1000 nodes per hour, default periods (estimate)",
            f"{estimate:.0f} CPU s",
            f"idle cost + {per_request * 1000:.2f} ms per request x default rate",
        ],
    ]
    rows.append(await mig_change(admin, agents[:CHANGED_AGENTS], changed))
    return rows


async def mig_change(admin: Api, agents: list[Agent], changed: Any) -> list[object]:
    started = time.monotonic()
    for a in agents:
        a.sub.ctx.bus.publish(events.MIG_CHANGED, changed)
    latencies: dict[str, float] = {}
    while len(latencies) < len(agents) and time.monotonic() - started < 20:
        for a in agents:
            if a.name in latencies:
                continue
            node = await asyncio.to_thread(admin.get, f"/api/v1/nodes/{a.name}")
            if "nvidia.com/mig-1g.10gb.count" in node["metadata"]["labels"]:
                latencies[a.name] = time.monotonic() - started
        await asyncio.sleep(0.05)
    values = list(latencies.values())
    return [
        f"MIG change published on the Node ({len(values)}/{len(agents)} nodes)",
        f"p50 {percentile(values, 50) * 1000:.0f} ms, max {max(values, default=float('nan')) * 1000:.0f} ms",
        "<= 2 s (polled every 50 ms)",
    ]


def _stamp(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["stageTimestamp"].replace("Z", "+00:00")).timestamp()


def _by_kind(entries: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        ref = e.get("objectRef", {})
        key = f"{e['verb']} {ref.get('resource', '')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
        out[key] = out.get(key, 0) + 1
    return out


def main() -> list[str]:
    logs.configure("json", "warning")
    title = f"Fleet: {NODES} simulated nodes' labels against the real kube-apiserver and etcd"
    try:
        kubebin = build_kubebin()
    except ClusterError as err:
        return [f"{title}: skipped, the control plane's binaries did not build ({err})"]
    cluster = Cluster(kubebin)
    try:
        cluster.start_control_plane()
        with tempfile.TemporaryDirectory() as tmp:
            rows = asyncio.run(run(cluster, Path(tmp)))
    finally:
        cluster.stop()
    pinned = ", ".join(f"{k} {v}" for k, v in versions().items())
    return [table(f"{title} ({pinned})", ["what", "measured", "goal / note"], rows)]


if __name__ == "__main__":
    for text in main():
        print(text)
