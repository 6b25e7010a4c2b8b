"""Docker: ``/etc/docker/daemon.json`` ``runtimes.<handler>.path``, optional ``default-runtime`` and ``features.cdi``.

Edits are spliced into the text: only the bytes of the values that change are rewritten, and new
members take the file's own indentation (spaces or tabs, detected) and separators, so key order, inline
arrays, unicode and the trailing newline all stay as they were. A new file is written with 4 spaces.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodeagent.errors import ConfigError
from nodeagent.runtime.detect import Detected
from nodeagent.runtime.engine import Edit, EngineKind, Files, NodeConfig, Reader, RuntimeSpec, decode

DEFAULT_PATH = "/etc/docker/daemon.json"


@dataclass(frozen=True)
class Style:
    indent: str | None = "    "
    """One indentation level; None for a single-line (compact) file."""
    compact_separators: bool = False
    newline_at_end: bool = True


def parse(path: str, data: bytes | None) -> tuple[dict[str, Any], Style]:
    """The daemon.json object and its layout; an error names the file and line."""
    if data is None:
        return {}, Style()
    text = decode(path, data)
    if not text.strip():
        return {}, Style()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed JSON: {err.msg} (column {err.colno})", source=path, line=err.lineno) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"expected a JSON object, got {type(obj).__name__}", source=path, line=1)
    return obj, detect_style(text)


def detect_style(text: str) -> Style:
    end = text.endswith("\n")
    lines = text.splitlines()
    if len(lines) <= 1:
        return Style(None, ": " not in text and ", " not in text, end)
    for line in lines[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) != len(line):
            return Style(line[: len(line) - len(stripped)], False, end)
    return Style("    ", False, end)


def render(obj: dict[str, Any], style: Style) -> bytes:
    """The whole object in the file's style (used when a file is created)."""
    if style.indent is None:
        seps = (",", ":") if style.compact_separators else (", ", ": ")
        text = json.dumps(obj, ensure_ascii=False, separators=seps)
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=style.indent)
    return (text + ("\n" if style.newline_at_end else "")).encode("utf-8")


# ------------------------------------------------------------------ text splicing (keeps every other byte)

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Member:
    key: str
    start: int
    """Offset of the key's opening quote."""
    value_start: int
    value_end: int


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def members(text: str, open_brace: int) -> tuple[list[Member], int]:
    """The members of the object starting at ``open_brace``, and the offset of its closing brace."""
    out: list[Member] = []
    i = _skip_ws(text, open_brace + 1)
    if text[i] == "}":
        return out, i
    while True:
        key, after_key = _DECODER.raw_decode(text, i)
        colon = _skip_ws(text, after_key)
        value_start = _skip_ws(text, colon + 1)
        _, value_end = _DECODER.raw_decode(text, value_start)
        out.append(Member(key, i, value_start, value_end))
        i = _skip_ws(text, value_end)
        if text[i] == "}":
            return out, i
        i = _skip_ws(text, i + 1)  # past the comma


def _line_indent(text: str, offset: int) -> str:
    line_start = text.rfind("\n", 0, offset) + 1
    line = text[line_start:offset]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _dump_value(value: Any, style: Style, base_indent: str) -> str:
    if style.indent is None:
        seps = (",", ":") if style.compact_separators else (", ", ": ")
        return json.dumps(value, ensure_ascii=False, separators=seps)
    return json.dumps(value, ensure_ascii=False, indent=style.indent).replace("\n", "\n" + base_indent)


def set_path(text: str, path: tuple[str, ...], value: Any, style: Style, open_brace: int | None = None) -> str:
    """Set ``path`` to ``value`` in the JSON text, touching only the bytes of that value."""
    if open_brace is None:
        open_brace = _skip_ws(text, 0)
    found, close = members(text, open_brace)
    for m in found:
        if m.key != path[0]:
            continue
        if len(path) > 1 and text[m.value_start] == "{":
            return set_path(text, path[1:], value, style, m.value_start)
        if len(path) > 1:
            value = _nest(path[1:], value)
        indent = _line_indent(text, m.start)
        return text[: m.value_start] + _dump_value(value, style, indent) + text[m.value_end :]
    new_value = _nest(path[1:], value) if len(path) > 1 else value
    multiline = "\n" in text[open_brace:close] or (style.indent is not None and not found)
    if multiline and style.indent is not None:
        inner = _line_indent(text, found[0].start) if found else _line_indent(text, open_brace) + style.indent
        colon = ": "
        member = f"{json.dumps(path[0], ensure_ascii=False)}{colon}{_dump_value(new_value, style, inner)}"
        if found:
            last = found[-1].value_end
            return text[:last] + ",\n" + inner + member + text[last:]
        outer = _line_indent(text, open_brace)
        return text[: open_brace + 1] + "\n" + inner + member + "\n" + outer + text[close:]
    colon = ":" if style.compact_separators else ": "
    member = f"{json.dumps(path[0], ensure_ascii=False)}{colon}{_dump_value(new_value, style, '')}"
    if found:
        last = found[-1].value_end
        sep = "," if style.compact_separators else ", "
        return text[:last] + sep + member + text[last:]
    return text[: open_brace + 1] + member + text[close:]


def delete_path(text: str, path: tuple[str, ...], open_brace: int | None = None) -> str:
    """Remove the member at ``path`` with its separating comma."""
    if open_brace is None:
        open_brace = _skip_ws(text, 0)
    found, _ = members(text, open_brace)
    for n, m in enumerate(found):
        if m.key != path[0]:
            continue
        if len(path) > 1:
            return delete_path(text, path[1:], m.value_start) if text[m.value_start] == "{" else text
        if n > 0:
            return text[: found[n - 1].value_end] + text[m.value_end :]
        if len(found) > 1:
            return text[: m.start] + text[found[1].start :]
        _, close = members(text, open_brace)
        return text[: open_brace + 1] + text[close:]
    return text


def _nest(path: tuple[str, ...], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


def add_runtime(obj: dict[str, Any], spec: RuntimeSpec) -> dict[str, Any]:
    """A copy of ``obj`` with the runtime's handlers added (other keys untouched, in their order).

    The same three handlers as on containerd and CRI-O (``nvidia``, ``nvidia-cdi``, ``nvidia-legacy``),
    as the toolkit's installer configures docker, so each GPU Operator RuntimeClass name works here too.
    """
    out = copy.deepcopy(obj)
    runtimes = out.setdefault("runtimes", {})
    if not isinstance(runtimes, dict):
        raise ValueError("runtimes must be an object")
    for name, binary in spec.handlers():
        entry = runtimes.setdefault(name, {})
        if not isinstance(entry, dict):
            raise ValueError(f"runtimes.{name} must be an object")
        entry["path"] = binary
    if spec.set_as_default:
        out["default-runtime"] = spec.name
    if spec.enable_cdi:
        features = out.setdefault("features", {})
        if not isinstance(features, dict):
            raise ValueError("features must be an object")
        features["cdi"] = True
    return out


def remove_runtime(obj: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """A copy of ``obj`` without the handlers ``names`` (and without a default naming one of them)."""
    out = copy.deepcopy(obj)
    runtimes = out.get("runtimes")
    if isinstance(runtimes, dict):
        for name in sorted(names):
            runtimes.pop(name, None)
        if not runtimes:
            del out["runtimes"]
    if out.get("default-runtime") in names:
        del out["default-runtime"]
    return out


def edit_text(text: str, old: dict[str, Any], new: dict[str, Any], style: Style) -> str:
    """Apply the difference ``old`` → ``new`` (top-level keys and one level below) to the text."""
    for key, value in new.items():
        if key not in old:
            text = set_path(text, (key,), value, style)
        elif old[key] != value:
            if isinstance(value, dict) and isinstance(old[key], dict):
                for sub, sub_value in value.items():
                    if old[key].get(sub, _MISSING) != sub_value:
                        text = set_path(text, (key, sub), sub_value, style)
                for sub in old[key]:
                    if sub not in value:
                        text = delete_path(text, (key, sub))
            else:
                text = set_path(text, (key,), value, style)
    for key in old:
        if key not in new:
            text = delete_path(text, (key,))
    return text


_MISSING = object()


@dataclass
class Docker:
    config_path: str = DEFAULT_PATH
    files: Files = field(default_factory=dict)
    name: str = "docker"

    def watched(self) -> tuple[str, ...]:
        return (self.config_path,)

    def desired(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        data = self.files.get(self.config_path)
        obj, style = parse(self.config_path, data)
        try:
            new_obj = add_runtime(obj, spec)
        except ValueError as err:
            raise ConfigError(str(err), source=self.config_path) from None
        if not spec.set_as_default and obj.get("default-runtime") in spec.handler_names():
            edit.warnings.append(
                f'"default-runtime": "{obj["default-runtime"]}" in {self.config_path} while runtime.set_as_default '
                "= false: every container runs through nvidia's runtime. It is kept (containers may rely on it): "
                "set runtime.set_as_default = true to make that explicit, or remove it if it is not intended"
            )
        if new_obj == obj:
            edit.evidence.append(f"runtime {spec.name!r} already in {self.config_path}")
            return edit
        if spec.set_as_default and obj.get("default-runtime") != spec.name:
            previous = obj.get("default-runtime", "runc")
            edit.evidence.append(f"default runtime {previous!r} -> {spec.name!r} (the original is kept for revert)")
        verb = "create" if data is None else "edit"
        new = self._render(data, obj, new_obj, style)
        handlers = ", ".join(sorted(spec.handler_names()))
        edit.put(self.config_path, data, new, f"{verb} {self.config_path}: add handlers {handlers}")
        return edit

    def removed(self, spec: RuntimeSpec) -> Edit:
        edit = Edit()
        data = self.files.get(self.config_path)
        obj, style = parse(self.config_path, data)
        new_obj = remove_runtime(obj, spec.handler_names())
        if new_obj != obj:
            edit.put(self.config_path, data, self._render(data, obj, new_obj, style), f"remove runtime {spec.name!r}")
        return edit

    def _render(self, data: bytes | None, old: dict[str, Any], new: dict[str, Any], style: Style) -> bytes:
        if data is None or not data.strip():
            return render(new, style)
        text = edit_text(decode(self.config_path, data), old, new, style)
        if json.loads(text) != new:  # the splice must give exactly the intended object
            return render(new, style)
        return text.encode("utf-8")


class DockerKind(EngineKind):
    """dockerd: one file, ``daemon.json``; SIGHUP reloads it."""

    name = "docker"

    def gather(self, detected: Detected, reader: Reader) -> None:
        reader.read(detected.config_path)

    def build(self, detected: Detected, node: NodeConfig) -> Docker:
        return Docker(detected.config_path, node.files)

    def revert_notes(
        self, detected: Detected, spec: RuntimeSpec, read: Callable[[str], bytes | None]
    ) -> tuple[str, ...]:
        restored = read(detected.config_path)
        if restored is None or b'"runtimes"' not in restored:
            return (
                "dockerd keeps the runtimes it has when a reload finds no `runtimes` key; "
                f"{spec.name!r} stays listed until dockerd's next restart",
            )
        return ()


KIND = DockerKind()
