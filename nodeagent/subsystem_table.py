"""The subsystems, in dependency order, found from their declarations.

Each subsystem package under ``nodeagent/`` holds a ``declaration.py`` with one ``DECLARATION``
(``nodeagent.subsystem.Declaration``): its name, class, requirements, settings sections. Nothing else lists
the subsystems: this table, the reload rule, the settings views and the import contracts' module lists
(checked by ``tests/core/test_declarations.py``) all follow from those. Only the declarations are imported
here; a subsystem's own modules are loaded only when it is enabled, so a process imports what it runs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import nodeagent
from nodeagent.errors import ConfigError
from nodeagent.settings import Settings
from nodeagent.subsystem import Declaration

Entry = Declaration
"""The table's rows are the declarations themselves."""

DECLARATION_MODULE = "declaration"


def discover(
    package_dir: Path = Path(nodeagent.__file__).parent, prefix: str = "nodeagent."
) -> tuple[Declaration, ...]:
    """Every ``<package>/declaration.py`` under ``package_dir``, in dependency order (ties by name)."""
    found: list[Declaration] = []
    for pkg in sorted(pkgutil.iter_modules([str(package_dir)]), key=lambda m: m.name):
        if not pkg.ispkg:
            continue
        children = {m.name for m in pkgutil.iter_modules([str(package_dir / pkg.name)])}
        if DECLARATION_MODULE not in children:
            continue
        module = importlib.import_module(f"{prefix}{pkg.name}.{DECLARATION_MODULE}")
        declaration = getattr(module, "DECLARATION", None)
        if not isinstance(declaration, Declaration):
            raise TypeError(f"{module.__name__} has no DECLARATION = Declaration(...)")
        if declaration.package != f"{prefix}{pkg.name}":
            raise TypeError(f"{module.__name__} declares a class outside its package: {declaration.target}")
        found.append(declaration)
    return tuple(dependency_order(found))


def enabled(settings: Settings, only: Iterable[str] = ()) -> list[Entry]:
    """The enabled subsystems (restricted to ``only`` when given), in dependency order."""
    only = list(only) or list(settings.agent.only)
    for name in only:
        if name not in BY_NAME:
            raise ConfigError(f"unknown subsystem {name!r}; valid: {', '.join(BY_NAME)}", key="agent.only")
    chosen = [
        e
        for e in SUBSYSTEMS
        if getattr(getattr(settings, e.name, None), "enabled", True)
        and (not only or e.name in only or any(c in only for c in e.companion_of))
    ]
    return dependency_order(chosen)


def dependency_order(entries: Sequence[Entry]) -> list[Entry]:
    """Topological order; a requirement that is not enabled is ignored (``--only`` narrows the set)."""
    names = {e.name for e in entries}
    ordered: list[Entry] = []
    placed: set[str] = set()
    visiting: set[str] = set()
    by_name = {e.name: e for e in entries}

    def visit(e: Entry) -> None:
        if e.name in placed:
            return
        if e.name in visiting:
            raise ConfigError(f"dependency cycle through {e.name!r}")
        visiting.add(e.name)
        for dep in e.requires:
            if dep in names:
                visit(by_name[dep])
        visiting.discard(e.name)
        placed.add(e.name)
        ordered.append(e)

    for e in entries:
        visit(e)
    return ordered


SUBSYSTEMS: tuple[Declaration, ...] = discover()

BY_NAME = {e.name: e for e in SUBSYSTEMS}
