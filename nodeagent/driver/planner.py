"""Judge an observation and plan the driver steps (pure: no I/O).

Order of the steps: load the missing modules (nvidia, nvidia-uvm, nvidia-modeset, nvidia-peermem with
RDMA), then create the missing device nodes. When modules are to be loaded, the device nodes depend on what
the load brings; they are planned again after it. The validation files are not the driver's: the
``validation`` subsystem writes them from ``events.DRIVER_READY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeagent.driver import devnodes, modules, versions
from nodeagent.driver.observe import DriverObservation
from nodeagent.model.driver import DriverFacts
from nodeagent.plan import Plan, Step
from nodeagent.settings import Settings

NAME = "driver"


@dataclass(frozen=True)
class Assessment:
    failures: tuple[str, ...]
    warnings: tuple[str, ...]
    loads: tuple[modules.ModuleLoad, ...]
    nodes: tuple[devnodes.DevNode, ...]
    facts: DriverFacts | None
    """Set when the driver is usable once ``loads`` and ``nodes`` are done and nothing failed."""
    evidence: tuple[str, ...] = ()
    version_check: versions.VersionCheck | None = field(default=None)

    @property
    def ready(self) -> bool:
        return self.facts is not None and not self.failures and not self.loads and not self.nodes


def assess(obs: DriverObservation, settings: Settings) -> Assessment:
    ds = settings.driver
    failures: list[str] = []
    warnings: list[str] = list(obs.notes)
    evidence: list[str] = list(obs.selection.evidence)
    files = obs.selection.files
    if files is None or obs.selection.reason:
        failures.append(obs.selection.reason)
    if files is not None and files.stray_versions:
        warnings.append(
            f"other libnvidia-ml versions next to {files.library_version}: {', '.join(files.stray_versions)}"
        )
    failures.extend(obs.problems)

    loads: tuple[modules.ModuleLoad, ...] = ()
    loaded = obs.loaded
    if loaded is not None:
        evidence.append(loaded.evidence())
        nouveau = modules.nouveau_problem(loaded)
        if nouveau:
            failures.append(nouveau)
        elif loaded.is_loaded("nouveau"):
            warnings.append(f"nouveau is loaded next to nvidia; {modules.NOUVEAU_FIX}")
        wanted = modules.plan_loads(loaded, rdma=ds.enable_rdma, params=ds.module_params)
        if ds.load_modules and not nouveau:
            loads = wanted
        elif not ds.load_modules:
            for load in wanted:
                if load.module == "nvidia":
                    failures.append("kernel module nvidia is not loaded and driver.load_modules is false")
                elif load.module in ("nvidia-uvm", modules.RDMA_MODULE):
                    warnings.append(f"kernel module {load.module} is not loaded (driver.load_modules is false)")

    check: versions.VersionCheck | None = None
    if obs.kernel is not None:
        kind = "open" if obs.kernel.open_modules else "proprietary"
        evidence.append(f"kernel module {obs.kernel.version} ({kind}) from {obs.kernel.source}")
        library = files.library_version if files is not None else ""
        check = versions.check_versions(
            obs.kernel.version, library, min_version=ds.min_version, sys_version=obs.sys_version
        )
        failures.extend(check.problems)
    elif loads:
        evidence.append("kernel module version: known once nvidia is loaded")

    nodes: tuple[devnodes.DevNode, ...] = ()
    if obs.majors is not None and not loads:
        wanted_nodes = devnodes.wanted_nodes(
            obs.majors,
            obs.gpu_minors,
            obs.capabilities or [],
            modeset=loaded is not None and loaded.is_loaded("nvidia-modeset"),
        )
        nodes = tuple(devnodes.missing_nodes(wanted_nodes, obs.existing_nodes))
        present = [n.path for n in wanted_nodes if n not in nodes]
        evidence.append(
            f"device nodes under dev root {obs.dev_root}: {len(present)} present, {len(nodes)} missing"
            f" (majors from {devnodes.PROC_DEVICES}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(obs.majors.items()) if k.startswith("nvidia"))
            + ")"
        )
    for h in obs.helpers:
        evidence.append(h.describe())
        if h.needed and not h.running:
            warnings.append(f"{h.name} is not running")

    facts = None
    if files is not None and not failures and obs.kernel is not None and loaded is not None:
        present_nodes = tuple(p for p, state in obs.existing_nodes.items() if state is not None)
        made = tuple(n.path for n in nodes)
        facts = DriverFacts(
            files=files,
            root_in_runtime=settings.cdi.driver_root_in_runtime or files.root,
            root_in_agent=obs.root_in_agent,
            dev_root=obs.dev_root,
            dev_root_in_agent=obs.dev_root_in_agent,
            kernel_version=obs.kernel.version,
            open_modules=obs.kernel.open_modules,
            modules=tuple(n for n in loaded.loaded() if n != "nouveau"),
            device_nodes=tuple(sorted({*present_nodes, *made})),
            helpers=obs.helpers,
            nvswitch=obs.nvswitch,
            warnings=tuple(warnings),
        )
    return Assessment(
        failures=tuple(f for f in failures if f),
        warnings=tuple(warnings),
        loads=loads,
        nodes=nodes,
        facts=facts,
        evidence=tuple(evidence),
        version_check=check,
    )


def build_plan(a: Assessment, obs: DriverObservation) -> Plan:
    steps: list[Step] = []
    # With a failure nothing is loaded or created: only stale validation files are removed.
    for load in () if a.failures else a.loads:
        steps.append(Step("load-module", load.module, f"{load.command} (module missing)", payload=load))
    for node in () if a.failures else a.nodes:
        state = obs.existing_nodes.get(node.path)
        verb = "create" if state is None else f"replace ({state.kind} {state.major}:{state.minor})"
        steps.append(
            Step("create-device-node", _under(obs.dev_root, node.path), f"{verb} {node.describe()}", payload=node)
        )
    return Plan(
        NAME,
        steps=tuple(steps),
        evidence=a.evidence,
        warnings=a.warnings,
        error="; ".join(a.failures),
    )


def _under(dev_root: str, path: str) -> str:
    return path if dev_root == "/" else dev_root.rstrip("/") + path
