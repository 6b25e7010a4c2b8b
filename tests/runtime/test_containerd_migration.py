"""containerd >= 2.0 migrates each file of config version 1 or 2 to version 3 before merging (checked against the
real containerd 2.4.2 in integration/runtime/test_containerd2.py); the model does the same."""

from __future__ import annotations

from typing import Any

from nodeagent.runtime import containerd_config as ctdconf
from nodeagent.runtime import tomldoc

V2 = "io.containerd.grpc.v1.cri"
V3 = "io.containerd.cri.v1.runtime"


def _v2(runtimes: dict[str, Any], **cri: Any) -> dict[str, Any]:
    return {"version": 2, "plugins": {V2: {**cri, "containerd": {"runtimes": runtimes, "snapshotter": "zfs"}}}}


def test_a_version_2_file_lands_under_the_runtime_plugin() -> None:
    doc = _v2({"kata": {"runtime_type": "io.containerd.kata.v2", "sandbox_mode": "shim"}}, sandbox_image="p:1")
    doc["plugins"][V2]["cni"] = {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}
    out = ctdconf.migrate_to_v3(doc)["plugins"][V3]
    assert out["containerd"]["runtimes"]["kata"] == {"runtime_type": "io.containerd.kata.v2", "sandboxer": "shim"}
    assert "snapshotter" not in out["containerd"] and "sandbox_image" not in out  # other plugins' settings
    assert out["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}
    assert doc["plugins"][V2]["containerd"]["runtimes"]["kata"]["sandbox_mode"] == "shim"  # input untouched


def test_the_files_own_version_3_table_wins_and_version_3_files_stay() -> None:
    doc = _v2({"nvidia": {"runtime_type": "io.containerd.runc.v2"}})
    doc["plugins"][V3] = {"containerd": {"default_runtime_name": "runc"}}
    out = ctdconf.migrate_to_v3(doc)["plugins"][V3]["containerd"]
    assert out["default_runtime_name"] == "runc" and "nvidia" in out["runtimes"]
    v3 = {"version": 3, "plugins": {V2: {"containerd": {"runtimes": {"x": {}}}}}}
    assert ctdconf.migrate_to_v3(v3) is v3


def test_a_version_2_main_and_a_version_3_dropin_merge_on_containerd_2_only() -> None:
    main = _v2({"runc": {"runtime_type": "io.containerd.runc.v2"}})
    dropin = {"version": 3, "plugins": {V3: {"containerd": {"runtimes": {"nvidia": {"runtime_type": "x"}}}}}}
    merged = ctdconf.merge_configs([main, dropin], deep=True)
    runtimes = tomldoc.get_in(merged, (*ctdconf.effective_cri_keys(2, deep=True), "containerd", "runtimes"))
    assert sorted(runtimes) == ["nvidia", "runc"]
    before_2 = ctdconf.merge_configs([main, dropin], deep=False)
    assert V3 not in before_2["plugins"][V2] and sorted(before_2["plugins"][V2]["containerd"]["runtimes"]) == ["runc"]


def test_an_unversioned_file_is_read_with_its_full_plugin_names_too() -> None:
    """containerd 1.x ignores version 2/3 tables in a file without ``version``; containerd 2 reads them."""
    short = {"plugins": {"cri": {"containerd": {"runtimes": {"a": {"runtime_type": "x"}}}}}}
    full = {"plugins": {V2: {"containerd": {"runtimes": {"b": {"runtime_type": "x"}}}}, V3: {"enable_cdi": True}}}
    assert sorted(ctdconf.migrate_to_v3(short)["plugins"][V3]["containerd"]["runtimes"]) == ["a"]
    out = ctdconf.migrate_to_v3(full)["plugins"][V3]
    assert sorted(out["containerd"]["runtimes"]) == ["b"] and out["enable_cdi"] is True
