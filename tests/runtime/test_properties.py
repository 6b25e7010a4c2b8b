"""Property tests over generated configs: apply gives the expected document, apply twice gives the same
bytes, revert gives the original bytes, and comments and unknown keys survive."""

from __future__ import annotations

import asyncio
import json
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.runtime.containerd import Containerd, Layout
from nodeagent.runtime.containerd_config import CRI_PLUGIN
from nodeagent.runtime.docker import Docker
from nodeagent.runtime.engine import RuntimeSpec

from .conftest import make_node

CONFIG = "/etc/containerd/config.toml"
names = st.sampled_from(["runc", "crun", "kata", "gvisor", "youki"])
keys = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True).filter(lambda k: k not in ("version", "imports", "plugins"))
scalars = st.one_of(st.booleans(), st.integers(-5, 5000), st.text("abc/._-", max_size=12))
comments = st.lists(st.text("abcdefgh .,", min_size=1, max_size=20), max_size=3)


def _toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


@st.composite
def containerd_configs(draw: Any) -> tuple[str, int, dict[str, Any]]:
    """TOML text of a containerd config with comments and unknown keys, its version, and the runtimes."""
    version = draw(st.sampled_from([1, 2, 3]))
    cri = CRI_PLUGIN[version]
    quoted = f'"{cri}"' if "." in cri else cri
    runtimes = draw(st.dictionaries(names, st.booleans(), min_size=1, max_size=3))
    default = draw(st.sampled_from([*sorted(runtimes), None]))
    lines: list[str] = [f"# {c}" for c in draw(comments)]
    if version > 1:
        lines.append(f"version = {version}")
    for k, v in draw(st.dictionaries(keys, scalars, max_size=3)).items():
        lines.append(f"x_{k} = {_toml_value(v)}  # unknown top-level key")
    lines += ["", f"[plugins.{quoted}]"]
    for k, v in draw(st.dictionaries(keys, scalars, max_size=3)).items():
        lines.append(f"  y_{k} = {_toml_value(v)}")
    lines += ["", f"  [plugins.{quoted}.containerd]"]
    if default:
        lines.append(f'    default_runtime_name = "{default}"')
    for name, systemd in runtimes.items():
        lines += [f"    # runtime {name}", f"    [plugins.{quoted}.containerd.runtimes.{name}]"]
        lines += ['      runtime_type = "io.containerd.runc.v2"', ""]
        lines += [f"      [plugins.{quoted}.containerd.runtimes.{name}.options]"]
        lines += [f"        SystemdCgroup = {_toml_value(systemd)}", ""]
    return "\n".join(lines) + "\n", version, {"runtimes": runtimes, "default": default}


def _cri(doc: dict[str, Any], version: int) -> dict[str, Any]:
    return doc["plugins"][CRI_PLUGIN[version]]


@settings(max_examples=60, deadline=None)
@given(containerd_configs(), st.booleans(), st.sampled_from(["1.6.20", "1.7.27", "2.0.4"]))
def test_containerd_in_place(config: tuple[str, int, dict[str, Any]], as_default: bool, ctd_version: str) -> None:
    text, version, meta = config
    spec = RuntimeSpec(set_as_default=as_default)
    engine = Containerd(Layout(CONFIG), {CONFIG: text.encode()}, version=ctd_version)
    edit = engine.desired(spec)
    new = edit.writes[CONFIG]
    doc, old_doc = tomllib.loads(new.decode()), tomllib.loads(text)
    cri, old_cri = _cri(doc, version), _cri(old_doc, version)
    nvidia = cri["containerd"]["runtimes"]["nvidia"]
    assert nvidia["options"]["BinaryName"] == spec.path
    source = (
        meta["default"] if meta["default"] in meta["runtimes"] else ("runc" if "runc" in meta["runtimes"] else None)
    )
    if source is None and "crun" in meta["runtimes"]:
        source = "crun"
    expected_systemd = meta["runtimes"][source] if source else None
    assert nvidia["options"].get("SystemdCgroup") == expected_systemd
    for name in meta["runtimes"]:
        assert cri["containerd"]["runtimes"][name] == old_cri["containerd"]["runtimes"][name]
    want_default = "nvidia" if as_default else meta["default"]
    assert cri["containerd"].get("default_runtime_name") == want_default
    # unknown keys and comments survive, in order
    assert {k: v for k, v in doc.items() if k != "plugins"} == {k: v for k, v in old_doc.items() if k != "plugins"}
    assert {k: v for k, v in cri.items() if k != "containerd"} == {
        k: v for k, v in old_cri.items() if k != "containerd"
    }
    kept = iter(new.decode().splitlines())
    changed_default = f'    default_runtime_name = "{meta["default"]}"'
    for line in text.splitlines():
        if as_default and line == changed_default:
            continue
        assert any(line == n for n in kept), f"lost: {line!r}"
    # apply twice: nothing more to do
    again = Containerd(Layout(CONFIG), {CONFIG: new}, version=ctd_version).desired(spec)
    assert not again.writes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containerd_configs(), st.booleans())
def test_containerd_revert_gives_original_bytes(config: tuple[str, int, dict[str, Any]], dropin: bool) -> None:
    text, version, _ = config
    if dropin and version > 1:
        text = text.replace(
            f"version = {version}\n", f'version = {version}\nimports = ["/etc/containerd/conf.d/*.toml"]\n', 1
        )
    with tempfile.TemporaryDirectory() as tmp:
        node = make_node(Path(tmp), {CONFIG: text.encode()}, containerd_version="1.6.20")

        async def go() -> None:
            plan = node.sub.plan(await node.sub.observe())
            assert not plan.error, plan.error
            await node.sub.apply(plan)
            assert node.sub.plan(await node.sub.observe()).empty
            await node.sub.revert()

        before = node.snapshot()
        asyncio.run(go())
        assert node.snapshot() == before


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-9, 99), st.text("aé b/", max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text("abcxyz-", min_size=1, max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdef-", min_size=1, max_size=6).filter(lambda k: k not in ("runtimes", "features")),
        json_values,
        max_size=5,
    ),
    st.sampled_from(["    ", "  ", "\t", None]),
    st.booleans(),
    st.booleans(),
)
def test_docker(obj: dict[str, Any], indent: str | None, as_default: bool, cdi: bool) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    spec = RuntimeSpec(set_as_default=as_default, enable_cdi=cdi)
    path = "/etc/docker/daemon.json"
    new = Docker(path, {path: text.encode()}).desired(spec).writes[path]
    doc = json.loads(new)
    # the three handlers of containerd and CRI-O (the toolkit's installer puts them on docker too)
    assert doc["runtimes"] == {name: {"path": binary} for name, binary in spec.handlers()}
    assert (doc.get("default-runtime") == "nvidia") == as_default or obj.get("default-runtime") == "nvidia"
    assert list(doc)[: len(obj)] == list(obj)  # key order kept, new keys at the end
    assert {k: v for k, v in doc.items() if k not in ("runtimes", "default-runtime", "features")} == {
        k: v for k, v in obj.items() if k != "default-runtime"
    }
    if indent is not None and obj:  # every original line is still there (the last member gains a comma)
        kept = iter(line.rstrip(",") for line in new.decode().splitlines())
        for line in text.splitlines():
            assert any(line.rstrip(",") == n for n in kept), f"lost: {line!r}"
    assert not Docker(path, {path: new}).desired(spec).writes
    # removing the runtime again gives the original object
    removed = Docker(path, {path: new}).removed(RuntimeSpec()).writes.get(path, new)
    back = json.loads(removed)
    if not as_default and not cdi:
        assert back == obj
