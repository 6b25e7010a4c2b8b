"""Write the subsystem module lists of the import contracts in pyproject.toml from the declarations.

Each subsystem is declared once, in ``nodeagent/<package>/declaration.py``. import-linter reads its
contracts from pyproject.toml, so the three lists that name every subsystem (the hardware contract's
sources, the subsystem layer, the independence contract) are generated here: ``make contracts`` writes
them, ``make lint`` runs ``--check`` and fails when pyproject.toml is behind the declarations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomlkit

REPO = Path(__file__).resolve().parents[1]
HARDWARE = "Only nodeagent.backends touches hardware"
LAYERS = "Layers:"
INDEPENDENT = "Subsystems are independent"


def declared_packages() -> list[str]:
    sys.path.insert(0, str(REPO))
    from nodeagent import subsystem_table

    return [d.package for d in subsystem_table.SUBSYSTEMS]


def synced(text: str, packages: list[str]) -> str:
    """pyproject.toml's text with the three lists naming exactly ``packages`` (everything else kept)."""
    doc = tomlkit.parse(text)
    contracts = doc["tool"]["importlinter"]["contracts"]  # type: ignore[index]
    declared = set(packages)

    def named(prefix: str) -> dict:  # type: ignore[type-arg]
        (found,) = [c for c in contracts if str(c["name"]).startswith(prefix)]
        return found  # type: ignore[no-any-return]

    hardware = named(HARDWARE)
    known = [str(m) for m in hardware["source_modules"]]
    others = [m for m in known if m not in declared and not is_stale_subsystem(m, known, declared)]
    hardware["source_modules"] = multiline(others + packages)

    layers = named(LAYERS)
    current = [str(layer) for layer in layers["layers"]]
    index = next(
        (i for i, layer in enumerate(current) if {m.strip() for m in layer.split("|")} & declared),
        None,
    )
    if index is None:
        raise SystemExit(f"pyproject.toml: no layer of contract {LAYERS!r} holds a subsystem")
    current[index] = " | ".join(packages)
    layers["layers"] = multiline(current)

    named(INDEPENDENT)["modules"] = multiline(packages)
    return tomlkit.dumps(doc)


def is_stale_subsystem(module: str, known: list[str], declared: set[str]) -> bool:
    """A package that used to be a subsystem and is gone: it has no directory any more."""
    path = REPO / Path(*module.split("."))
    return module not in declared and not path.exists() and not path.with_suffix(".py").exists()


def multiline(items: list[str]) -> tomlkit.items.Array:
    array = tomlkit.array()
    array.extend(items)
    return array.multiline(True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if pyproject.toml is not in sync")
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    args = parser.parse_args()
    text = args.pyproject.read_text()
    new = synced(text, declared_packages())
    if new == text:
        return 0
    if args.check:
        print(f"{args.pyproject}: the import contracts do not match the subsystem declarations; run `make contracts`")
        return 1
    args.pyproject.write_text(new)
    print(f"{args.pyproject}: import contracts written from the declarations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
