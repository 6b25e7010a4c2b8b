"""A subsystem is declared once (its package's ``declaration.py``); every list that names subsystems follows.

The table, the import contracts in pyproject.toml, the settings sections and the docs are checked against
the declarations, so a subsystem missing from any of them fails here. Each subsystem's observe/plan runs
with its strict settings view: reading a section it does not declare raises.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nodeagent import subsystem_table, testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.settings import SECTIONS, Settings, UndeclaredSection, scoped
from nodeagent.subsystem import BaseSubsystem, Declaration, Reconciler, make_plan

REPO = Path(__file__).resolve().parents[2]
DECLARED = subsystem_table.SUBSYSTEMS
PACKAGES = {d.package for d in DECLARED}


def contracts() -> dict[str, dict[str, object]]:
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {c["name"]: c for c in doc["tool"]["importlinter"]["contracts"]}


def contract(prefix: str) -> dict[str, object]:
    (found,) = [c for name, c in contracts().items() if name.startswith(prefix)]
    return found


def test_every_subsystem_package_is_declared_and_in_the_table() -> None:
    names = [d.name for d in DECLARED]
    assert sorted(names) == [
        "cdi",
        "deviceplugin",
        "dra",
        "driver",
        "gpuhealth",
        "labels",
        "metrics",
        "mig",
        "runtime",
        "validation",
    ]
    for d in DECLARED:
        cls = d.load()
        assert issubclass(cls, BaseSubsystem) and cls.declaration is d, d.name
        assert (cls.name, cls.requires, cls.settings_sections) == (d.name, d.requires, d.settings)
        assert d.package == f"nodeagent.{d.name}"
        assert all(r in subsystem_table.BY_NAME for r in d.requires + d.companion_of), d
        assert d.settings and all(s in SECTIONS for s in d.settings), d


def test_a_package_with_a_declaration_joins_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "extra" / "newsub"
    pkg.mkdir(parents=True)
    (tmp_path / "extra" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "declaration.py").write_text(
        "from nodeagent.subsystem import Declaration\n"
        'DECLARATION = Declaration("newsub", "extra.newsub.subsystem:X", ("driver",), settings=("kubelet",))\n'
    )
    (tmp_path / "extra" / "plain").mkdir()
    (tmp_path / "extra" / "plain" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = subsystem_table.discover(tmp_path / "extra", prefix="extra.")
    assert [d.name for d in found] == ["newsub"]


def test_the_import_contracts_name_every_subsystem() -> None:
    forbidden = set(contract("Only nodeagent.backends")["source_modules"])  # type: ignore[arg-type]
    assert forbidden >= PACKAGES, PACKAGES - forbidden
    layers: list[str] = contract("Layers:")["layers"]  # type: ignore[assignment]
    subsystem_layers = [{m.strip() for m in layer.split("|")} for layer in layers if PACKAGES & set(layer.split())]
    assert subsystem_layers == [PACKAGES], "all subsystems share one layer, and only they are in it"
    independent = set(contract("Subsystems are independent")["modules"])  # type: ignore[arg-type]
    assert independent == PACKAGES


def test_the_contracts_are_generated_from_the_declarations() -> None:
    """``make contracts`` writes the lists; the file in the tree is what it writes, and a new package joins."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_contracts", REPO / "tools" / "sync_contracts.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    text = (REPO / "pyproject.toml").read_text()
    packages = [d.package for d in DECLARED]
    assert sync.synced(text, packages) == text, "pyproject.toml is behind the declarations: run `make contracts`"
    grown = tomllib.loads(sync.synced(text, [*packages, "nodeagent.newsub"]))
    by_name = {c["name"]: c for c in grown["tool"]["importlinter"]["contracts"]}
    for name, c in by_name.items():
        if name.startswith(("Only nodeagent.backends", "Subsystems are independent")):
            key = "source_modules" if "source_modules" in c else "modules"
            assert "nodeagent.newsub" in c[key], name
        if name.startswith("Layers:"):
            assert any("nodeagent.newsub" in layer for layer in c["layers"])


def test_the_docs_name_every_subsystem() -> None:
    arch = (REPO / "docs" / "architecture.md").read_text()
    row = next(line for line in arch.splitlines() if line.startswith("| subsystems |"))
    assert {n.strip("` ") for n in row.split("|")[2].split(",")} == {d.name for d in DECLARED}
    config = (REPO / "docs" / "configuration.md").read_text()
    for d in DECLARED:
        for section in d.settings:
            assert f"| `{section}." in config, (d.name, section)
        if d.name in SECTIONS:
            assert f"| `{d.name}.enabled` |" in config, d.name


def test_a_view_reads_declared_sections_and_refuses_the_others() -> None:
    view = scoped(Settings(), ("metrics", "kubelet"), reader="metrics")
    assert view.metrics.interval_s == Settings().metrics.interval_s
    assert view.kubelet.pod_resources_socket.endswith("kubelet.sock")
    with pytest.raises(UndeclaredSection, match=r"metrics read cdi.spec_path .*add 'cdi'"):
        _ = view.cdi.spec_path
    with pytest.raises(ValueError, match="unknown settings sections"):
        scoped(Settings(), ("metric",), reader="x")


def test_a_subsystem_sees_only_its_sections(tmp_path: Path) -> None:
    ctx = testing.context(Root(tmp_path))
    from nodeagent.driver.subsystem import DriverSubsystem

    sub = DriverSubsystem(ctx)
    assert sub.ctx.settings.driver is ctx.settings.driver and sub.ctx.routes is ctx.routes
    with pytest.raises(UndeclaredSection):
        _ = sub.ctx.settings.metrics.interval_s
    assert ctx.settings.metrics.interval_s  # the agent's own context is whole


@pytest.mark.parametrize("declaration", DECLARED, ids=lambda d: d.name)
async def test_observe_and_plan_read_only_declared_sections(tmp_path: Path, declaration: Declaration) -> None:
    """Run the subsystem's observe/plan (or describe) on a simulated node with its strict view."""
    inv = sandbox.sandbox_inventory(2)
    ctx = testing.context(Root(tmp_path), inventory=inv)
    sandbox.populate_sandbox(ctx.root, inv)
    sub = declaration.load()(ctx)
    if isinstance(sub, Reconciler):
        plan = await make_plan(sub)
    else:
        plan = await sub.describe()
    assert plan.subsystem == declaration.name
    assert "read" not in (plan.error or ""), plan.error


def test_a_view_of_a_view_starts_from_the_whole_settings() -> None:
    first = scoped(Settings(), ("mig",), reader="mig")
    second = scoped(first, ("cdi", "driver"), reader="cdi")
    assert second.driver.root == Settings().driver.root
    with pytest.raises(UndeclaredSection):
        _ = second.mig.config
