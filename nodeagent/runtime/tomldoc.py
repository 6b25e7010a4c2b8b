"""Style-preserving TOML edits on tomlkit documents: only the keys touched change, byte for byte.

New keys take the indentation of their siblings; new tables are appended after the existing children of
their parent; everything else (comments, order, unknown keys, blank lines) is left as parsed.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import tomlkit
from tomlkit.container import Container, OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, InlineTable, Item, Table
from tomlkit.toml_document import TOMLDocument

from nodeagent.runtime.engine import decode, toml_error

Node = TOMLDocument | Table | InlineTable | Container | OutOfOrderTableProxy


def parse(path: str, data: bytes | None, line_offset: int = 0) -> TOMLDocument:
    """Parse a TOML file; an error names the file and the line."""
    if data is None:
        return tomlkit.document()
    text = decode(path, data)
    try:
        return tomlkit.parse(text)
    except TOMLKitError as err:
        if getattr(err, "line", None) is None:  # e.g. a duplicate key: ask tomllib where it is
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as std:
                found = _AT_LINE.search(str(std))
                if found:
                    raise toml_error(path, _Located(str(err), int(found.group(1))), line_offset) from None
        raise toml_error(path, err, line_offset) from None


_AT_LINE = re.compile(r"at line (\d+)")


class _Located(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def dump(doc: TOMLDocument) -> bytes:
    return doc.as_string().encode("utf-8")


def plain(node: Any) -> Any:
    """A tomlkit value as plain Python (dict/list/str/...)."""
    if isinstance(node, Item | Container):
        return node.unwrap()
    return node


def get_in(node: Any, keys: Sequence[str]) -> Any:
    """The value at ``keys`` (plain or tomlkit), or None."""
    cur = node
    for key in keys:
        if not isinstance(cur, Mapping | Container | Table | InlineTable) or key not in cur:
            return None
        cur = cur[key]
    return cur


def is_table(node: Any) -> bool:
    return isinstance(node, Table | InlineTable | TOMLDocument | Container | dict)


def ensure_table(node: Node, keys: Sequence[str], *, holder: bool = False) -> Node:
    """The table at ``keys``, created when missing (intermediate tables are implicit super tables).

    ``holder``: the last table only holds sub-tables (e.g. ``runtimes``), so it gets no header either.
    """
    cur: Node = node
    for i, key in enumerate(keys):
        if key in cur:
            nxt = cur[key]
            if isinstance(nxt, AoT) or not is_table(nxt):
                path = ".".join(keys[: i + 1])
                raise TypeError(f"{path} is a {type(nxt).__name__}, expected a table")
            cur = nxt
            continue
        last = i == len(keys) - 1
        if isinstance(cur, InlineTable):
            new: Node = tomlkit.inline_table()
        else:
            new = tomlkit.table(is_super_table=holder or not last)
        append(cur, key, new)
        cur = cur[key]
    return cur


def _sibling_indent(node: Node, *, tables: bool) -> str | None:
    body = node.value.body if isinstance(node, Table) else getattr(node, "body", [])
    indent = None
    for key, item in body:
        if key is None:
            continue
        if isinstance(item, Table) == tables and not isinstance(item, AoT):
            indent = item.trivia.indent.rsplit("\n", 1)[-1]  # the spaces; blank lines are decided below
    return indent


def append(node: Node, key: str, value: Any) -> None:
    """Add a new key (or sub-table) with the indentation its siblings use."""
    if isinstance(node, OutOfOrderTableProxy):  # the table is split across the file: tomlkit places it
        node[key] = value
        return
    is_tbl = isinstance(value, Table)
    indent = _sibling_indent(node, tables=is_tbl)
    rendered = node.as_string() if is_tbl else ""  # what precedes the new table decides the blank line
    node.append(key, value)
    if isinstance(node, InlineTable):
        return
    item = node.item(key) if hasattr(node, "item") else None
    if not isinstance(item, Item):
        return
    if indent is not None:
        item.trivia.indent = indent
        if is_tbl and isinstance(item, Table) and indent:  # the file indents its tables: so does the new one
            _indent_fresh(item, indent)
    if is_tbl and rendered.strip() and not rendered.endswith("\n\n"):
        item.trivia.indent = "\n" + item.trivia.indent  # a blank line before the new header


def _indent_fresh(table: Table, header_indent: str) -> None:
    """Keys and sub-tables built from plain values get the layout of the file (one level deeper)."""
    step = "  " if " " in header_indent or not header_indent else "\t"
    for key, child in table.value.body:
        if key is None or not isinstance(child, Item) or child.trivia.indent.strip("\n"):
            continue
        if isinstance(child, Table):
            child.trivia.indent = "\n" + header_indent + step
            _indent_fresh(child, header_indent + step)
        else:
            child.trivia.indent = header_indent + step


def set_value(node: Node, key: str, value: Any) -> bool:
    """Set a scalar, keeping its position and comment when it exists. Returns True when it changed."""
    if key in node:
        current = node[key]
        if plain(current) == value and type(plain(current)) is type(value):
            return False
        item = tomlkit.item(value)
        if isinstance(current, Item) and not isinstance(current, Table | InlineTable):
            item.trivia.comment_ws = current.trivia.comment_ws
            item.trivia.comment = current.trivia.comment
            item.trivia.indent = current.trivia.indent
            item.trivia.trail = current.trivia.trail
        node[key] = item
        return True
    append(node, key, value)
    return True


def delete(node: Node, keys: Sequence[str]) -> bool:
    parent = get_in(node, keys[:-1]) if len(keys) > 1 else node
    if parent is None or keys[-1] not in parent:
        return False
    del parent[keys[-1]]
    return True


def copy_table(source: Any) -> Table:
    """A deep copy of a table (tomlkit, keeping its layout) or a table built from a plain dict."""
    if isinstance(source, Table):
        return copy.deepcopy(source)
    table = tomlkit.table()
    for key, value in dict(source).items():
        if not isinstance(value, Mapping):
            table.append(key, copy.deepcopy(value))
    for key, value in dict(source).items():
        if isinstance(value, Mapping):
            table.append(key, copy_table(value))
    return table


def merge_deep(into: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of plain dicts, ``over`` winning on scalars (containerd >= 2.0 plugin tables)."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge_deep(into[key], value)
        else:
            into[key] = copy.deepcopy(value) if isinstance(value, Mapping | list) else value
    return into
