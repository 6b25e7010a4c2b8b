"""docs/architecture.md, the project's map, is true: every path it names exists, every package under
``nodeagent/`` is named, and its ownership table names each owner once.

What counts as a path. The map writes paths as markdown code spans (one pair of backticks on one line).
A span is taken as a path when it is made of path characters only (letters, digits, ``_ . * -`` and ``/``,
a letter, digit or ``_`` first: so not ``/healthz`` or ``/run/...``, which are routes and host paths, nor
``./.nodeagent/sim``, relative to the working directory) and either

- holds a ``/`` and its first segment has no ``.`` (``nvidia.com/mig.config`` is a label and
  ``nodeagent.sim-mig-state/v1`` a format name, not paths), or
- is one file name with a suffix in ``FILE_SUFFIXES`` (``compose.py``, ``pyproject.toml``).

Spans in ``NOT_PATHS`` are names that only look like paths. A trailing ``/`` names a directory, and a span
may be a glob (``nodeagent/model/gpu_models/*.json``: at least one file must match).

Where a path is looked up. The map names files in full (``nodeagent/mig/operands.py``,
``tests/core/test_reload.py``) and, in prose about one package, by their tail (``metrics/tiers.py``, or
``persistence.py`` in the simulator's paragraph). A span whose first segment is an entry of the
repository's root is looked up there only; any other span under ``nodeagent/`` or under one of its
directories. A package counts as named when a span names its directory and no other one (``sim/`` fits
two packages and names neither).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

REPO = Path(__file__).parents[2]
PACKAGE = REPO / "nodeagent"
MAP = REPO / "docs/architecture.md"

CODE_SPAN = re.compile(r"`([^`\n]+)`")
PATH_SHAPE = re.compile(r"[A-Za-z0-9_][\w.*-]*(?:/[\w.*-]+)*/?")
FILE_SUFFIXES = frozenset({".py", ".toml", ".json", ".yaml", ".md", ".sh", ".proto", ".csv"})
NOT_PATHS = {
    "nodes/status": "the Node's status subresource in the Kubernetes API",
}


def path_spans(text: str) -> Iterator[str]:
    """The code spans of ``text`` that name paths, in order (see the module's docstring)."""
    for span in CODE_SPAN.findall(text):
        if span in NOT_PATHS or not PATH_SHAPE.fullmatch(span):
            continue
        first, slash, _ = span.partition("/")
        if slash:
            if "." not in first:
                yield span
        elif PurePosixPath(span).suffix in FILE_SUFFIXES:
            yield span


def directories_under(top: Path) -> list[Path]:
    return [top, *sorted(p for p in top.rglob("*") if p.is_dir() and "__pycache__" not in p.parts)]


BASES = directories_under(PACKAGE)
ROOT_ENTRIES = frozenset(p.name for p in REPO.iterdir())


def resolve(span: str) -> set[Path]:
    """Every existing file or directory ``span`` can name."""
    pattern = span.rstrip("/")
    bases = [REPO] if pattern.split("/")[0] in ROOT_ENTRIES else BASES
    return {
        hit
        for base in bases
        for hit in base.glob(pattern)
        if hit.exists() and (hit.is_dir() or not span.endswith("/")) and "__pycache__" not in hit.parts
    }


def packages() -> list[str]:
    """Every package under nodeagent/ (a directory with ``__init__.py``) but nodeagent itself."""
    return sorted(
        p.parent.relative_to(REPO).as_posix()
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE and "__pycache__" not in p.parts
    )


def ownership_rows(text: str) -> list[tuple[str, str]]:
    """(concern, owner) cells of the table under "## Who owns what"."""
    section = text.split("\n## Who owns what\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith(("|---", "| concern |")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 2, f"docs/architecture.md: an ownership row without two cells: {line}"
        rows.append((cells[0], cells[1]))
    return rows


def test_the_parser_takes_paths_and_leaves_other_names() -> None:
    text = (
        "`nodeagent/mig/` `metrics/tiers.py` `compose.py` `pyproject.toml` `nodeagent/model/gpu_models/*.json` "
        "`/healthz` `/run/nvidia/validations/*` `./.nodeagent/sim` `nvidia.com/mig.config` "
        "`nodeagent.sim-mig-state/v1` `nodes/status` `gpu.call_timeout_s` `Context.add_route` `nodeagent mig ...`"
    )
    assert list(path_spans(text)) == [
        "nodeagent/mig/",
        "metrics/tiers.py",
        "compose.py",
        "pyproject.toml",
        "nodeagent/model/gpu_models/*.json",
    ]
    assert resolve("nodeagent/mig/") == {PACKAGE / "mig"}
    assert resolve("tiers.py") == {PACKAGE / "metrics/tiers.py"}
    assert len(resolve("sim/")) == 2  # backends/sim and backends/gpu/sim
    assert not resolve("nodeagent/compose.py/")  # a file is not a directory
    assert not resolve("tests/compose.py")  # anchored at the repository's root
    assert not resolve("nodeagent/nonexistent.py")


def test_every_path_the_map_names_exists() -> None:
    missing = sorted({span for span in path_spans(MAP.read_text(encoding="utf-8")) if not resolve(span)})
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_package_under_nodeagent_is_on_the_map() -> None:
    named: set[Path] = set()
    for span in path_spans(MAP.read_text(encoding="utf-8")):
        hits = resolve(span)
        if len(hits) == 1:
            named |= hits
    absent = [p for p in packages() if REPO / p not in named]
    assert not absent, f"packages that docs/architecture.md does not name: {absent}"


def test_the_ownership_table_has_no_duplicate_rows() -> None:
    rows = ownership_rows(MAP.read_text(encoding="utf-8"))
    assert len(rows) > 20
    concerns = [concern for concern, _ in rows]
    owners = [next(path_spans(owner), owner) for _, owner in rows]  # an owner's first path
    twice = sorted({c for c in concerns if concerns.count(c) > 1} | {o for o in owners if owners.count(o) > 1})
    assert not twice, f"docs/architecture.md's ownership table has duplicate rows for: {twice}"
