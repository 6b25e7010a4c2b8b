"""``nodeagent mig ...`` end to end on a simulated node whose MIG state lives in the sandbox root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.cli import main
from nodeagent.mig.config import load_file

FIXTURES = Path(__file__).parent / "fixtures"
OPERATOR_CONFIG = FIXTURES / "gpu-operator-default-mig-parted-config.yaml"


def run(
    capsys: pytest.CaptureFixture[str], root: Path, *argv: str, sim: str = "h100-80gb-hbm3:8"
) -> tuple[int, str, str]:
    code = main(["mig", *argv[:1], "--simulate", sim, "--root", str(root), *argv[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def state_of(root: Path) -> str:
    return (root / "var/lib/nodeagent/sim-mig-state.json").read_text()


def test_round_trip_apply_assert_export_assert_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    code, generated, _ = run(capsys, root, "generate-config")
    assert code == 0
    gen = tmp_path / "gen.yaml"
    gen.write_text(generated)
    assert run(capsys, root, "assert", "-f", str(gen), "-c", "all-disabled")[0] == 0
    assert run(capsys, root, "assert", "-f", str(gen), "-c", "all-balanced")[0] == 1
    code, out, _ = run(capsys, root, "apply", "-f", str(gen), "-c", "all-balanced")
    assert code == 0, out
    assert "MIG configuration applied successfully" in out
    code, out, _ = run(capsys, root, "assert", "-f", str(gen), "-c", "all-balanced")
    assert (code, out) == (0, "Selected MIG configuration currently applied\n")
    code, exported, _ = run(capsys, root, "export")
    assert code == 0
    assert exported == (
        "version: v1\nmig-configs:\n  current:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n"
        '        "1g.10gb": 2\n        "2g.20gb": 1\n        "3g.40gb": 1\n'
    )
    cur = tmp_path / "current.yaml"
    cur.write_text(exported)
    assert run(capsys, root, "assert", "-f", str(cur), "-c", "current")[0] == 0
    # Re-applying the applied config changes nothing: the MIG devices keep their UUIDs.
    before = json.loads(state_of(root))
    code, out, _ = run(capsys, root, "apply", "-f", str(gen), "-c", "all-balanced")
    assert code == 0 and "step(s) done" not in out and out.count("already as configured") == 8
    assert json.loads(state_of(root)) == before
    # Moving to 1g.10gb x2 + 2g.20gb x1 + 1g.20gb... only the difference: every 3g.40gb goes, the rest stays.
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "version: v1\nmig-configs:\n  m:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n"
        '        "1g.10gb": 2\n        "2g.20gb": 1\n        "1g.20gb": 2\n'
    )
    code, out, _ = run(capsys, root, "apply", "-f", str(mixed), "-c", "m")
    assert code == 0, out
    after = json.loads(state_of(root))
    for b, a in zip(before["gpus"], after["gpus"], strict=True):
        kept = {i["uuid"] for i in b["instances"] if i["profile"] != "3g.40gb"}
        assert kept <= {i["uuid"] for i in a["instances"]}
        assert sorted(i["profile"] for i in a["instances"]) == ["1g.10gb", "1g.10gb", "1g.20gb", "1g.20gb", "2g.20gb"]


def test_environment_variables_like_mig_parted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "node"
    monkeypatch.setenv("MIG_PARTED_CONFIG_FILE", str(OPERATOR_CONFIG))
    monkeypatch.setenv("MIG_PARTED_SELECTED_CONFIG", "all-3g.40gb")
    monkeypatch.setenv("MIG_PARTED_MODE_CHANGE_ONLY", "true")
    code, out, _ = run(capsys, root, "apply")
    assert code == 0, out
    assert "create" not in out
    monkeypatch.delenv("MIG_PARTED_MODE_CHANGE_ONLY")
    assert run(capsys, root, "assert", "--mode-only")[0] == 0
    assert run(capsys, root, "assert")[0] == 1
    assert run(capsys, root, "apply")[0] == 0
    assert run(capsys, root, "assert")[0] == 0
    monkeypatch.setenv("MIG_PARTED_CONFIG_LABEL", "snapshot")
    monkeypatch.setenv("MIG_PARTED_OUTPUT_FORMAT", "json")
    code, out, _ = run(capsys, root, "export")
    assert json.loads(out)["mig-configs"] == {
        "snapshot": [{"devices": "all", "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}]
    }


C0 = "version: v1\nmig-configs:\n  c:\n    - devices: all\n"

BAD_INPUTS = [
    ("version: v2\nmig-configs: {}\n", "c", "version: unknown version"),
    (
        C0 + '      mig-enabled: true\n      mig-devices: {"1g.5gb": 7}\n',
        "c",
        "mig-configs.c[0].mig-devices.1g.5gb: GPU 0 (NVIDIA H100 80GB HBM3, GPU-",
    ),
    (
        C0 + '      mig-enabled: true\n      mig-devices: {"3g.40gb": 3}\n',
        "c",
        "mig-configs.c[0].mig-devices.3g.40gb: 3 exceeds the maximum of 2",
    ),
    (
        C0 + '      mig-enabled: true\n      mig-devices: {"4g.40gb": 1, "2g.20gb": 2}\n',
        "c",
        "): 4g.40gb + 2x2g.20gb does not fit on a NVIDIA H100 80GB HBM3: needs 8",
    ),
    (C0 + "      mig-enabled: false\n", "d", "no config named 'd'"),
    (
        C0 + "      mig-enable: false\n",
        "c",
        "mig-configs.c[0].mig-enable: unknown key",
    ),
]


@pytest.mark.parametrize(("text", "name", "message"), BAD_INPUTS)
def test_bad_input_exits_2_names_file_and_key_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, name: str, message: str
) -> None:
    root = tmp_path / "node"
    run(capsys, root, "export")  # creates the state file
    before = state_of(root)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run(capsys, root, "apply", "-f", str(path), "-c", name)
    assert code == 2
    assert f"{path}: " in err and message in err
    assert state_of(root) == before


def test_holders_refuse_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    assert run(capsys, root, "apply", "-f", str(OPERATOR_CONFIG), "-c", "all-7g.80gb")[0] == 0
    # A process holding /dev/nvidia<minor> of GPU 2, seen through the root's /proc.
    state = json.loads(state_of(root))
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend

    minor = SimGpuBackend("h100-80gb-hbm3", 8, 0)._gpus[2].minor
    fd = root / "proc/4242/fd"
    fd.mkdir(parents=True)
    (fd / "3").symlink_to(f"/dev/nvidia{minor}")
    (root / "proc/4242/comm").write_text("python\n")
    (root / "proc/4242/cgroup").write_text(
        "0::/kubepods.slice/kubepods-pod8a2f1c3e_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1.scope\n"
    )
    code, out, _ = run(capsys, root, "apply", "-f", str(OPERATOR_CONFIG), "-c", "all-1g.10gb")
    assert code == 1
    assert "GPU 2: refused: in use by pid 4242 (python) in pod uid 8a2f1c3e-1b2c-4d5e-8f90-123456789abc" in out
    after = json.loads(state_of(root))
    assert after["gpus"][2] == state["gpus"][2]
    assert all(len(g["instances"]) == 7 for i, g in enumerate(after["gpus"]) if i != 2)
    code, out, _ = run(capsys, root, "apply", "-f", str(OPERATOR_CONFIG), "-c", "all-1g.10gb", "--force")
    assert code == 0
    assert len(json.loads(state_of(root))["gpus"][2]["instances"]) == 7


def test_hooks_run_in_order_with_mig_parted_variables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    log = tmp_path / "hooks.log"
    hooks = tmp_path / "hooks.yaml"
    lines = ["version: v1", "hooks:"]
    for name in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"):
        lines += [
            f"  {name}:",
            "    - command: /bin/sh",
            f'      args: ["-c", "echo {name} $MIG_PARTED_SELECTED_CONFIG $EXTRA >> {log}"]',
            "      envs: {EXTRA: x}",
        ]
    hooks.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, root, "apply", "-f", str(OPERATOR_CONFIG), "-c", "all-balanced", "-k", str(hooks))
    assert code == 0, err
    assert log.read_text().splitlines() == [
        "apply-start all-balanced x",
        "pre-apply-mode all-balanced x",
        "pre-apply-config all-balanced x",
        "apply-exit all-balanced x",
    ]
    bad = tmp_path / "bad-hooks.yaml"
    bad.write_text("version: v1\nhooks:\n  pre-apply: []\n")
    code, _, err = run(capsys, root, "apply", "-f", str(OPERATOR_CONFIG), "-c", "all-balanced", "-k", str(bad))
    assert code == 2 and "hooks.pre-apply: unknown hook" in err


def test_reset_that_needs_a_reboot_is_reported(tmp_path: Path) -> None:
    """In-process: the simulator refuses resets as in a passthrough VM; nvidia_drm is named when loaded."""
    import asyncio

    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from nodeagent.backends.hostfs import Root
    from nodeagent.mig import service

    async def go() -> None:
        sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
        config = load_file(OPERATOR_CONFIG).select("all-7g.80gb")
        sim.block_reset("reboot")
        out = await service.apply_config(config, sim, root=Root(tmp_path), inventory=await sim.inventory())
        assert out.reboot_required and not out.ok
        assert "NVML_ERROR_RESET_REQUIRED" in out.reasons()[0] and "after a reboot" in out.reasons()[0]
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc/modules").write_text("nvidia_drm 122880 4 - Live 0x0\nnvidia 1 0 - Live 0x0\n")
        sim.block_reset("in-use")
        out = await service.apply_config(config, sim, root=Root(tmp_path), inventory=await sim.inventory())
        assert not out.ok and "modprobe -r nvidia_drm" in out.reasons()[0]
        sim.block_reset(None)
        out = await service.apply_config(config, sim, root=Root(tmp_path), inventory=await sim.inventory())
        assert out.ok
        await sim.close()

    asyncio.run(go())


def test_no_driver_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "no-driver").mkdir()
    monkeypatch.setenv("NODEAGENT_DRIVER__ROOT", "/no-driver")
    code = main(["mig", "export", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "nodeagent mig: " in err and ("NVIDIA driver not found" in err or "NVML" in err)


def test_skip_reset_and_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "node"
    op = str(OPERATOR_CONFIG)
    assert run(capsys, root, "assert", "-f", op, "-c", "all-balanced", "--valid-config")[0] == 0
    code, out, _ = run(capsys, root, "apply", "-f", op, "-c", "all-7g.80gb", "--skip-reset")
    assert code == 0 and "MIG mode change pending until the GPU is reset" in out
    state = json.loads(state_of(root))
    assert all(g["mig_pending"] and not g["mig_enabled"] and not g["instances"] for g in state["gpus"])
    assert run(capsys, root, "assert", "-f", op, "-c", "all-7g.80gb", "--mode-only")[0] == 1
    assert run(capsys, root, "apply", "-f", op, "-c", "all-7g.80gb")[0] == 0
    assert run(capsys, root, "assert", "-f", op, "-c", "all-7g.80gb")[0] == 0


def test_valid_config_checks_the_file_only_as_mig_parted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``assert --valid-config``: the file is valid and the config is in it, whatever GPUs the node has (an
    A100 layout on an H100 node, or no GPU at all); plain ``assert`` keeps the hardware check."""
    root = tmp_path / "node"
    op = str(OPERATOR_CONFIG)
    code, out, _ = run(capsys, root, "assert", "-f", op, "-c", "all-1g.5gb", "--valid-config")
    assert (code, out) == (0, "Selected MIG configuration is valid\n")
    code, _, err = run(capsys, root, "assert", "-f", op, "-c", "all-1g.5gb")
    assert code == 1 and "has no MIG profile '1g.5gb'" in err and "cannot be applied to these GPUs" in err

    async def no_gpus(settings: object) -> object:
        raise AssertionError("--valid-config must not open the GPUs")

    monkeypatch.setattr("nodeagent.compose.open_gpus", no_gpus)
    monkeypatch.setenv("MIG_PARTED_VALID_CONFIG", "true")
    code = main(["mig", "assert", "--root", str(tmp_path), "-f", op, "-c", "all-1g.5gb"])
    assert (code, capsys.readouterr().out) == (0, "Selected MIG configuration is valid\n")
    code = main(["mig", "assert", "--root", str(tmp_path), "-f", op, "-c", "no-such-config"])
    assert code == 2 and "no config named 'no-such-config'" in capsys.readouterr().err


def test_name_style_device_filter_is_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "node"
    path = tmp_path / "named.yaml"
    path.write_text(
        "version: v1\nmig-configs:\n  c:\n"
        "    - devices: all\n      mig-enabled: false\n"
        '    - device-filter: "A100-SXM4-40GB"\n      devices: all\n      mig-enabled: true\n'
        '      mig-devices: {"1g.5gb": 7}\n'
    )
    code, out, err = run(capsys, root, "apply", "-f", str(path), "-c", "c")
    assert code == 0, err
    assert f"nodeagent mig: warning: {path}: mig-configs.c[1].device-filter: 'A100-SXM4-40GB' is not a PCI id" in err
    assert out.count("already as configured") == 8
    code, out, err = run(capsys, root, "assert", "-f", str(path), "-c", "c", "--valid-config")
    assert (code, out) == (0, "Selected MIG configuration is valid\n") and "mig-configs.c[1].device-filter" in err


@pytest.mark.parametrize("first", ["apply", "export"])
def test_the_sandbox_is_laid_out_whichever_command_runs_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str
) -> None:
    """``mig apply`` (its lock and the simulator's MIG state land in the state directory) or any other ``mig``
    command first on an empty root, then ``apply --only labels``: the labels see a laid-out GPU node."""
    root = tmp_path / "node"
    if first == "apply":
        code, out, _ = run(
            capsys, root, "apply", "-f", str(OPERATOR_CONFIG), "-c", "all-balanced", sim="h100-80gb-hbm3:2"
        )
    else:
        code, out, _ = run(capsys, root, "export", sim="h100-80gb-hbm3:2")
    assert code == 0, out
    assert (root / "proc/driver/nvidia/version").is_file() and (root / "dev/nvidiactl").is_file()
    assert main(["apply", "--simulate", "h100-80gb-hbm3:2", "--root", str(root), "--only", "labels"]) == 0
    labels = (root / "etc/kubernetes/node-feature-discovery/features.d/nodeagent").read_text().splitlines()
    assert "nvidia.com/gpu.mode=compute" in labels and "nvidia.com/vgpu.present=false" in labels
    # A root someone laid out first is still left as it is.
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc/hostname").write_text("mine\n")
    assert run(capsys, other, "export", sim="h100-80gb-hbm3:2")[0] == 0
    assert sorted(p.name for p in other.iterdir()) == ["etc", "var"]
