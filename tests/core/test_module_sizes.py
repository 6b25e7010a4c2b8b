"""No module under nodeagent/ over 600 lines, except pure tables (issue 19): a long module does two jobs.

A module that grows past the limit is split by concern into files a newcomer can name. The only way past
it is an entry in ``TABLES``, with a reason, for a module whose length is data (top-level assignments of
tables); the code around the tables still has to fit the limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "nodeagent"
LIMIT = 600

TABLES: dict[str, str] = {
    # "nodeagent/<path>.py": "why its length is data, e.g. the DCGM field table",
}
"""Modules allowed past LIMIT because they are tables; keep it short."""


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def code_lines(source: str) -> int:
    """Lines outside top-level assignments (the tables): what still has to fit the limit."""
    tree = ast.parse(source)
    table = sum(
        node.end_lineno - node.lineno + 1
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.end_lineno is not None
    )
    return len(source.splitlines()) - table


def oversized(package: Path, allowed: dict[str, str]) -> list[str]:
    """'path: N lines' for every module over LIMIT that the allow-list does not excuse."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        lines = line_count(path)
        if lines > LIMIT and rel not in allowed:
            found.append(f"{rel}: {lines} lines")
    return found


def test_no_module_is_over_the_limit() -> None:
    too_long = oversized(PACKAGE, TABLES)
    assert not too_long, (
        f"modules over {LIMIT} lines (split each by concern; only pure tables go in TABLES, with a reason): "
        + ", ".join(too_long)
    )


def test_every_allowed_module_is_a_table_still_over_the_limit() -> None:
    for rel, reason in TABLES.items():
        path = REPO / rel
        assert path.is_file(), f"{rel}: in TABLES but gone; remove the entry"
        assert reason.strip(), f"{rel}: say why it is a table"
        assert line_count(path) > LIMIT, f"{rel}: {line_count(path)} lines, within the limit; remove the entry"
        code = code_lines(path.read_text(encoding="utf-8"))
        assert code <= LIMIT, f"{rel}: {code} lines outside its tables; that part must fit {LIMIT} lines"


def test_the_check_finds_a_long_module_and_honours_the_allow_list(tmp_path: Path) -> None:
    package = tmp_path / "nodeagent"
    (package / "sub").mkdir(parents=True)
    (package / "short.py").write_text("x = 1\n" * LIMIT)
    (package / "sub" / "long.py").write_text("x = 1\n" * (LIMIT + 1))
    assert oversized(package, {}) == [f"nodeagent/sub/long.py: {LIMIT + 1} lines"]
    assert oversized(package, {"nodeagent/sub/long.py": "a table"}) == []


def test_only_tables_count_as_tables() -> None:
    table = "FIELDS = {\n" + "    1: 'a',\n" * 700 + "}\n\n\ndef lookup(n):\n    return FIELDS[n]\n"
    assert code_lines(table) == 4  # two blank lines and the function
    logic = "def f():\n" + "    x = 1\n" * 700
    assert code_lines(logic) == 701
