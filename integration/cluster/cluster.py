"""A real single-node Kubernetes for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kubelet (one binary, integration/cluster/build.sh) on a real containerd, a CDI-capable
release built from its Go module (integration/cluster/containerd.py; the distribution's 1.6 ignores the CDI
devices the kubelet hands a container for its DRA claim).

Everything lives in one short temporary directory ``base`` (/tmp/na-XXXX), which is also the agent's
Root for the node: ``base/etc/containerd/config.toml``, ``base/run/containerd/containerd.sock``,
``base/var/lib/kubelet`` (the kubelet's --root-dir, with its pod-resources socket), ``base/var/log``,
the PKI, every data directory and every log. Every component listens on 127.0.0.1 only, on free ports.

containerd and the kubelet run in a private mount namespace held by a ``sleep`` process: in it,
``/var/lib``, ``/var/log`` and ``/run`` are bind mounts of the same directories under ``base``, so the
paths the kubelet does not let one move (``/var/lib/kubelet/device-plugins``, ``/var/log/containers``)
and containerd's shim sockets (``/run/containerd/s``) land in ``base`` too, and the mounts they make
for containers vanish with the namespace. The kernel settings the kubelet would otherwise rewrite for
the whole machine (vm.overcommit_memory, kernel.panic, ...) are files under ``base`` bound over their
/proc/sys entries in that namespace. The kubelet's cgroups go under a cgroup root of the cluster's own
(``/nodeagent-<id>``), removed in teardown. Processes are stopped by pid (their process group).

Pods are host-network: the CNI configuration only exists so that containerd reports its network ready.

CDI: containerd reads the specs in ``base/etc/cdi``, ``base/var/run/cdi`` (the node's /etc/cdi and /var/run/cdi,
as the agent writes them on ``Root(base)``) and ``base/gpu-node/var/run/cdi``: ``Cluster.gpu_node`` is where a
test lays out a simulated GPU node (driver files, device-node twins) whose agent writes its spec, and its DRA
plugin the per-claim specs, into that node's /var/run/cdi.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.cluster.api import Api, ApiError
from integration.cluster.containerd import ClusterContainerd, containerd_config
from integration.cluster.pki import KeyPair, Pki, make_pki
from integration.runtime.conftest import build_pause_archive
from tests.support import free_port

HERE = Path(__file__).parent
NODE_NAME = "na-cluster-node"
PAUSE_IMAGE = "localhost/nodeagent/pause:test"
CDI_RUNTIME_HANDLER = "nodeagent-cdi"
"""A containerd runtime handler (a RuntimeClass's ``handler``) that runs ``Cluster.cdi_runtime``, a program a
test puts there (NVIDIA's runtime in CDI mode, what the GPU Operator does under a containerd without CDI); it
also passes the ``cdi.k8s.io/*`` annotations on to the OCI spec. The default runtime is untouched."""
GPU_NODE = "gpu-node"
AUDITED_NAMESPACE = "nodeagent"  # the API server's audit log records the requests of this namespace's ServiceAccounts
CGROUP_MOUNTS = Path("/sys/fs/cgroup")

# What the kubelet wants these kernel settings to be (it would write them on the machine otherwise).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


FEATURE_GATES = {"DRADeviceTaints": True, "ResourceHealthStatus": True, "DRAPartitionableDevices": True}
"""Alpha gates of 1.34 the DRA plugin's health and dynamic MIG need (issue 22): device taints on ResourceSlices
(apiserver keeps the field, scheduler honours it, controller-manager's taint controller), the kubelet's
DRAResourceHealth stream (kubelet, apiserver for ``allocatedResourcesStatus``), partitionable devices (apiserver
keeps counters, scheduler allocates them). Set on every component that has them."""


def feature_gates_flag() -> str:
    return "--feature-gates=" + ",".join(f"{k}={str(v).lower()}" for k, v in sorted(FEATURE_GATES.items()))


class ClusterError(RuntimeError):
    """The cluster could not be built or started: names the component and ends with its last log lines."""


def versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _built(script: str, timeout_s: float) -> Path:
    """Run a build script of this directory; the path it prints last (ClusterError when it fails)."""
    try:
        done = subprocess.run([str(HERE / script)], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise ClusterError(f"{script}: nothing built after {timeout_s}s") from err
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-30:])
        raise ClusterError(f"{script} failed ({done.returncode}):\n{tail}")
    return Path(done.stdout.strip().splitlines()[-1])


def build_kubebin(timeout_s: float = 3600) -> Path:
    """The cached multi-call binary, built first when absent (integration/cluster/build.sh)."""
    return _built("build.sh", timeout_s)


def build_containerd(timeout_s: float = 1800) -> Path:
    """The directory of the cached containerd, containerd-shim-runc-v2 and ctr, built first when absent
    (integration/cluster/build_containerd.sh)."""
    return _built("build_containerd.sh", timeout_s)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM to the process group it leads, SIGKILL after ``timeout_s``."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _kubeconfig(
    path: Path, server: str, ca: Path, user: KeyPair | None = None, token: str = "", *, inline: bool = False
) -> Path:
    """A kubeconfig naming its files, or (``inline``) holding them: the agent reads file paths through its
    Root (a sandbox in simulation), so its kubeconfig must not point at files of the test machine."""
    creds: dict[str, str] = {"token": token} if token else {}
    if user is not None:
        creds = {"client-certificate": str(user.cert), "client-key": str(user.key)}
    cluster: dict[str, str] = {"server": server, "certificate-authority": str(ca)}
    if inline:
        cluster = {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "user", "user": creds}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def _http_ok(url: str, ctx: Any = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Cluster:
    kubebin: Path
    containerd_bin: Path = Path()
    """The directory of the built containerd, containerd-shim-runc-v2 and ctr (``build_containerd``)."""
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="na-", dir="/tmp")))
    node_name: str = NODE_NAME
    processes: dict[str, Process] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    containerd: ClusterContainerd | None = None
    holder: Process | None = None
    pki: Pki | None = None
    cgroup_dirs: list[Path] = field(default_factory=list)

    # ------------------------------------------------------------------ paths and clients

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def kubelet_root(self) -> Path:
        return self.base / "var/lib/kubelet"

    @property
    def cdi_runtime(self) -> Path:
        """What ``CDI_RUNTIME_HANDLER`` runs as its runc (absent until a test writes it)."""
        return self.base / "usr/local/bin/nodeagent-cdi-runtime"

    @property
    def gpu_node(self) -> Path:
        """Where a test lays out a simulated GPU node (absent until one does)."""
        return self.base / GPU_NODE

    @property
    def cdi_spec_dirs(self) -> list[Path]:
        """The directories containerd reads CDI specs from."""
        return [self.base / "etc/cdi", self.base / "var/run/cdi", self.gpu_node / "var/run/cdi"]

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root / "pod-resources/kubelet.sock"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.base / "kubeconfig/admin"

    @property
    def admin(self) -> Api:
        assert self.pki is not None
        return Api(self.url, self.pki.ca.cert, self.pki.admin.cert, self.pki.admin.key)

    def log(self, name: str) -> Path:
        return self.base / "logs" / f"{name}.log"

    def tail(self, name: str, lines: int = 30) -> str:
        if name == "containerd" and self.containerd is not None:
            return tail(self.containerd.log, lines)
        return tail(self.log(name), lines)

    def kubeconfig_for_token(self, path: Path, token: str) -> Path:
        assert self.pki is not None
        return _kubeconfig(path, self.url, self.pki.ca.cert, token=token, inline=True)

    # ------------------------------------------------------------------ process control

    def _spawn(self, name: str, argv: list[str]) -> Process:
        log = self.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        p = Process(name, proc, log)
        self.processes[name] = p
        return p

    def _in_namespace(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder.proc.pid}", "--mount", "--"]

    def _component(self, name: str, *flags: str) -> Process:
        argv = [str(self.kubebin), name, *flags]
        if name == "kubelet":
            argv = self._in_namespace() + argv
        return self._spawn(name, argv)

    def wait(self, name: str, ready: Callable[[], bool], timeout_s: float, what: str = "") -> None:
        """Poll until ``ready``; a dead component or the deadline raises ClusterError with its log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.processes.values():
                if not p.alive():
                    raise ClusterError(
                        f"{p.name} exited ({p.proc.returncode}) while waiting for {name}; "
                        f"last lines of {p.log}:\n{tail(p.log)}"
                    )
            if ready():
                return
            time.sleep(0.2)
        log = self.containerd.log if name == "containerd" and self.containerd else self.log(name)
        raise ClusterError(f"{name} not {what or 'ready'} after {timeout_s}s; last lines of {log}:\n{tail(log)}")

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        self.start_control_plane()
        self._start_controllers()
        self._start_namespace()
        self._start_containerd()
        self._start_kubelet()
        self.wait("kubelet", self.node_ready, 180, "Ready (Node condition, no not-ready taint)")
        self.wait(
            "kube-controller-manager",
            lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
            60,
            "done (no default ServiceAccount)",
        )

    def start_control_plane(self) -> None:
        """etcd and kube-apiserver only (no root needed): what the fleet bench loads."""
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kubelet", "kubelet-health"):
            self.ports[name] = free_port()
        self.pki = make_pki(self.base / "pki", self.node_name)
        self._start_etcd()
        self._start_apiserver()

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._component(
            "etcd",
            "--name=test",
            f"--data-dir={self.base / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--log-level=warn",
        )
        self.wait("etcd", lambda: _http_ok(f"{client}/health"), 30)

    def _start_apiserver(self) -> None:
        pki = self.pki
        assert pki is not None
        self._component(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={self.base / 'apiserver'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/24",
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            # The Endpoints of the `kubernetes` Service may not be a loopback address.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            feature_gates_flag(),
            # DRADeviceTaints: the scheduler and the taint controller watch DeviceTaintRules (v1alpha3 only);
            # without it served their informers never sync and no pod with a claim is scheduled.
            "--runtime-config=resource.k8s.io/v1alpha3=true",
        )
        _kubeconfig(self.admin_kubeconfig_dir() / "admin", self.url, pki.ca.cert, pki.admin)
        self.wait("kube-apiserver", self._readyz, 120, "ready (/readyz)")

    @property
    def audit_log(self) -> Path:
        return self.base / "logs/audit.log"

    def _audit_policy(self) -> Path:
        """The API server's audit log records (metadata only) the requests of the agent's ServiceAccounts."""
        policy = self.base / "etc/kubernetes/audit-policy.json"
        policy.parent.mkdir(parents=True, exist_ok=True)
        rule = {"level": "Metadata", "userGroups": [f"system:serviceaccounts:{AUDITED_NAMESPACE}"]}
        doc = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [rule, {"level": "None"}],
        }
        policy.write_text(json.dumps(doc))
        return policy

    def audit(self) -> list[dict[str, Any]]:
        """The audited requests so far, one entry per request (a watch once, when its response starts)."""
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("stage") == ("ResponseStarted" if entry.get("verb") == "watch" else "ResponseComplete"):
                    out.append(entry)
        return out

    def restart_apiserver(self, *, compact_etcd: bool = False) -> None:
        """Stop kube-apiserver by pid and start it again with the same flags; with ``compact_etcd``, etcd
        forgets every revision before its current one meanwhile (so an old resourceVersion is gone)."""
        old = self.processes.pop("kube-apiserver")
        old.stop()
        if compact_etcd:
            self.compact_etcd()
        argv = [str(a) for a in old.proc.args]  # type: ignore[union-attr]
        self._spawn("kube-apiserver", argv)
        self.wait("kube-apiserver", self._readyz, 120, "ready (/readyz) after a restart")

    def restart_kubelet(self) -> None:
        """Stop the kubelet by pid and start it again with the same flags (it deletes the device plugins'
        sockets and recreates its ``kubelet.sock``, as on a node)."""
        old = self.processes.pop("kubelet")
        old.stop()
        argv = [str(a) for a in old.proc.args]  # type: ignore[union-attr]
        self._spawn("kubelet", argv)
        url = f"http://127.0.0.1:{self.ports['kubelet-health']}/healthz"
        self.wait("kubelet", lambda: _http_ok(url), 90, "healthy (/healthz) after a restart")

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (its JSON gateway); returns that revision."""
        url = f"http://127.0.0.1:{self.ports['etcd']}/v3"

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(request, timeout=10) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
                return doc

        revision = int(post("/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        post("/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def admin_kubeconfig_dir(self) -> Path:
        d = self.base / "kubeconfig"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _readyz(self) -> bool:
        try:
            return bool(self.admin.call("GET", "/readyz", timeout=5) == "ok")
        except (ApiError, OSError):
            return False

    def _exists(self, path: str) -> bool:
        try:
            self.admin.get(path)
        except (ApiError, OSError):
            return False
        return True

    def _start_controllers(self) -> None:
        pki = self.pki
        assert pki is not None
        kc = self.admin_kubeconfig_dir()
        cm = _kubeconfig(kc / "controller-manager", self.url, pki.ca.cert, pki.controller_manager)
        sched = _kubeconfig(kc / "scheduler", self.url, pki.ca.cert, pki.scheduler)
        self._component(
            "kube-controller-manager",
            f"--kubeconfig={cm}",
            f"--authentication-kubeconfig={cm}",
            f"--authorization-kubeconfig={cm}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['controller-manager']}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            feature_gates_flag(),
        )
        self._component(
            "kube-scheduler",
            f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}",
            f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['scheduler']}",
            "--leader-elect=false",
            feature_gates_flag(),
        )
        import ssl

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their serving certificates are self-signed, in memory
        for name in ("controller-manager", "scheduler"):
            url = f"https://127.0.0.1:{self.ports[name]}/healthz"
            self.wait(f"kube-{name}", lambda url=url: _http_ok(url, insecure), 60, "healthy (/healthz)")

    def _start_namespace(self) -> None:
        """The `sleep` that holds the private mount namespace of containerd and the kubelet. Inside it, / is
        made shared, as systemd makes it on a real node (a pod's HostToContainer volume needs its source on a
        shared or slave mount); the namespace is private, so nothing made in it reaches the host."""
        binds = []
        for d in ("var/lib", "var/log", "run"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
            binds.append((self.base / d, Path("/") / d))
        for key, value in KUBELET_SYSCTLS.items():
            f = self.base / "sysctl" / key
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(value + "\n")
            binds.append((f, Path("/proc/sys") / key))
        mounts = "".join(f"mount --bind '{src}' '{dst}'\n" for src, dst in binds)
        script = "set -e\nmount --make-rshared /\n" + mounts + "exec sleep infinity\n"
        self.holder = self._spawn("namespace", ["unshare", "--mount", "--propagation=private", "sh", "-c", script])
        pid = self.holder.proc.pid
        self.wait("namespace", lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep", 10, "set up")
        # the holder is not a component: a dead one is reported by the kubelet's or containerd's wait
        del self.processes["namespace"]

    def _start_containerd(self) -> None:
        socket_host = "/run/containerd/containerd.sock"
        binary = " ".join([*self._in_namespace(), str(self.containerd_bin / "containerd")])
        config_host = "/etc/containerd/config.toml"
        d = ClusterContainerd(self.base, binary, config_host, socket_host, bin_dir=self.containerd_bin)
        text = containerd_config(
            self.base,
            socket_host,
            bin_dir=self.containerd_bin,
            sandbox_image=PAUSE_IMAGE,
            cdi_spec_dirs=self.cdi_spec_dirs,
            cdi_handler=CDI_RUNTIME_HANDLER,
            cdi_runtime=self.cdi_runtime,
            runc=shutil.which("runc") or "runc",
        )
        d.config.parent.mkdir(parents=True, exist_ok=True)
        d.config.write_text(text)
        cni_conf = self.base / "etc/cni/net.d/10-hostnetwork-only.conflist"
        cni_conf.parent.mkdir(parents=True, exist_ok=True)
        cni_conf.write_text(
            json.dumps({"cniVersion": "0.4.0", "name": "hostnetwork-only", "plugins": [{"type": "loopback"}]})
        )
        if Path("/usr/lib/cni").is_dir():
            (self.base / "opt/cni").mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                (self.base / "opt/cni/bin").symlink_to("/usr/lib/cni")
        d.write_restart_script()
        self.containerd = d
        d.start()
        self.wait("containerd", lambda: d.cri_status() == "ok", 60, "serving CRI")
        archive = build_pause_archive(self.base)
        d.ctr("-n", "k8s.io", "images", "import", str(archive))

    def _cgroup_root(self) -> str:
        name = f"/nodeagent-{self.base.name}"
        for mount in sorted(CGROUP_MOUNTS.iterdir()):
            if not mount.is_dir() or not (mount / "cgroup.procs").exists():
                continue
            d = mount / name.lstrip("/")
            d.mkdir(exist_ok=True)
            self.cgroup_dirs.append(d)
            if mount.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (d / knob).write_text((mount / knob).read_text())
        return name

    def _start_kubelet(self) -> None:
        pki = self.pki
        assert pki is not None and self.containerd is not None
        kc = _kubeconfig(self.admin_kubeconfig_dir() / "kubelet", self.url, pki.ca.cert, pki.kubelet)
        manifests = self.base / "etc/kubernetes/manifests"
        manifests.mkdir(parents=True, exist_ok=True)
        resolv = self.base / "etc/resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet-health"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",  # containerd's runc runtime here has SystemdCgroup = false
            "cgroupRoot": self._cgroup_root(),
            "failSwapOn": False,
            "staticPodPath": str(manifests),
            "containerRuntimeEndpoint": f"unix://{self.containerd.sock}",
            "podLogsDir": str(self.base / "var/log/pods"),
            "resolvConf": str(resolv),
            "makeIPTablesUtilChains": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "featureGates": dict(FEATURE_GATES),
        }
        config_file = self.base / "etc/kubernetes/kubelet.json"
        config_file.write_text(json.dumps(config, indent=1))
        self._component(
            "kubelet",
            f"--config={config_file}",
            f"--kubeconfig={kc}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.kubelet_root / 'pki'}",
            f"--hostname-override={self.node_name}",
            "--v=2",
        )
        url = f"http://127.0.0.1:{self.ports['kubelet-health']}/healthz"
        self.wait("kubelet", lambda: _http_ok(url), 90, "healthy (/healthz)")

    def node_ready(self) -> bool:
        try:
            node = self.admin.get(f"/api/v1/nodes/{self.node_name}")
        except (ApiError, OSError):
            return False
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
        )
        # ... and the node lifecycle controller has lifted its not-ready taint: pods can be scheduled
        taints = {t.get("key") for t in node.get("spec", {}).get("taints", []) or []}
        return ready and "node.kubernetes.io/not-ready" not in taints

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop everything by pid, newest first; remove the cgroups and the directory."""
        if "kubelet" in self.processes:
            self.processes["kubelet"].stop()
        if self.containerd is not None:
            self.containerd.stop()
            self.containerd.cleanup_shims()
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        if self.holder is not None:
            self.holder.stop()
        for d in self.cgroup_dirs:
            _remove_cgroup(d)
        shutil.rmtree(self.base, ignore_errors=True)


def _remove_cgroup(d: Path) -> None:
    if not d.is_dir():
        return
    for child in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        d.rmdir()


def start_cluster(kubebin: Path, containerd_bin: Path) -> Cluster:
    cluster = Cluster(kubebin, containerd_bin)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
