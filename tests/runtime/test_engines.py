"""The engine kinds: every engine detect.py can name has one, and a kind reads each file once."""

from __future__ import annotations

import typing

from nodeagent.runtime.detect import Detected
from nodeagent.runtime.engine import Reader
from nodeagent.runtime.engines import ENGINES


def test_every_engine_detect_can_name_has_a_kind() -> None:
    named = set(typing.get_args(typing.get_type_hints(Detected)["engine"]))
    assert set(ENGINES) == named
    assert all(kind.name == name for name, kind in ENGINES.items())


def test_reader_reads_each_file_and_directory_once() -> None:
    reads: list[str] = []
    lists: list[str] = []
    host = {"/etc/a": b"one", "/etc/d/x": b"two"}

    def read(path: str) -> bytes | None:
        reads.append(path)
        return host.get(path)

    def list_files(directory: str) -> list[str]:
        lists.append(directory)
        return sorted(p.rsplit("/", 1)[1] for p in host if p.startswith(directory + "/"))

    reader = Reader(read, list_files)
    for _ in range(2):
        assert reader.read("/etc/a") == b"one"
        assert reader.read("/etc/missing") is None
        assert reader.listdir("/etc/d") == ("x",)
    assert reads == ["/etc/a", "/etc/missing"]
    assert lists == ["/etc/d"]
    assert reader.files == {"/etc/a": b"one", "/etc/missing": None}
    assert reader.listings == {"/etc/d": ("x",)}
