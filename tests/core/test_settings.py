"""Settings: precedence, errors that name the source and key, docs kept in step with the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import settings as S
from nodeagent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodeagent.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_documented() -> None:
    s = S.load()
    assert s.agent.listen == "127.0.0.1:9400"
    assert s.simulation.profile == "h100-80gb-hbm3" and s.simulation.count == 8
    assert s.runtime.runtime_class == "nvidia" and s.runtime.set_as_default is False


def test_precedence_is_cli_over_env_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'version = 1\n[agent]\nlisten = "127.0.0.1:1111"\nlog_level = "debug"\n'
        "[metrics]\ninterval_s = 3\nslow_interval_s = 30\n",
    )
    env = {"NODEAGENT_AGENT__LISTEN": "127.0.0.1:2222", "NODEAGENT_METRICS__INTERVAL_S": "4"}
    s = S.load(file=path, env=env, cli={("agent", "listen"): "127.0.0.1:3333"})
    assert s.agent.listen == "127.0.0.1:3333"  # CLI wins
    assert s.metrics.interval_s == 4.0  # env beats file
    assert s.agent.log_level == "debug"  # file beats default


def test_misspelt_key_names_file_key_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "version = 1\n[runtime]\nset_as_defualt = true\n")
    with pytest.raises(ConfigError) as err:
        S.load(file=path)
    text = str(err.value)
    assert str(path) in text and "runtime.set_as_defualt" in text and "'set_as_default'" in text


def test_misspelt_section_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, "version = 1\n[runtim]\nengine = 'docker'\n")
    with pytest.raises(ConfigError, match=r"unknown section 'runtim'; did you mean 'runtime'"):
        S.load(file=path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[metrics]\ninterval_s = 'fast'\n", r"metrics.interval_s: expected a number, got 'fast'"),
        ("[metrics]\ninterval_s = 0.5\n", r"metrics.interval_s: 0.5 must be >= 1"),
        ("[agent]\nlisten = 'nowhere'\n", r"agent.listen: 'nowhere' must be HOST:PORT"),
        ("[runtime]\nengine = 'containerdd'\n", r"did you mean 'containerd'"),
        ("[runtime]\nset_as_default = 'yes'\n", r"expected a boolean"),
        ("[driver]\nmodule_params = {nvidia = 'x'}\n", r"driver.module_params.nvidia: expected a list"),
        ("[agent]\nonly = 'driver'\n", r"agent.only: expected a list"),
        ("[driver]\nroot = 'relative/path'\n", r"must be an absolute path"),
        ("agent = 3\n", r"agent: must be a table"),
    ],
)
def test_bad_values_are_rejected_with_key(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "version = 1\n" + body)
    with pytest.raises(ConfigError, match=expected) as err:
        S.load(file=path)
    assert str(path) in str(err.value)


def test_version_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing `version = 1`"):
        S.load(file=write(tmp_path, "[agent]\n"))
    with pytest.raises(ConfigError, match="unsupported settings version 2"):
        S.load(file=write(tmp_path, "version = 2\n"))


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "version = 1\n[agent\nlisten = 1\n")
    with pytest.raises(ConfigError, match=r"malformed TOML: .*line 2") as err:
        S.load(file=path)
    assert str(path) in str(err.value)


def test_missing_file_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file not found"):
        S.load(file=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        S.load(file=tmp_path)


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment NODEAGENT_METRICS__INTERVAL_S: metrics.interval_s"):
        S.load(env={"NODEAGENT_METRICS__INTERVAL_S": "soon"})
    with pytest.raises(ConfigError, match=r"did you mean 'interval_s'"):
        S.load(env={"NODEAGENT_METRICS__INTERVAL": "5"})
    assert S.load(env={"NODEAGENT_AGENT__ONLY": "driver, runtime"}).agent.only == ["driver", "runtime"]
    assert S.load(env={"NODEAGENT_REQUIRE_INTEGRATION": "1"}) == S.load()  # not a settings variable


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.slow_interval_s: must be >= metrics\.interval_s"):
        S.load(env={"NODEAGENT_METRICS__INTERVAL_S": "20", "NODEAGENT_METRICS__SLOW_INTERVAL_S": "10"})


def test_settings_are_frozen() -> None:
    s = S.load()
    with pytest.raises(AttributeError):
        s.agent.listen = "x"  # type: ignore[misc]


def test_configuration_doc_matches_the_defaults() -> None:
    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == S.render_docs(), "run `make docs` to regenerate docs/configuration.md"
    for section, cls in S.SECTIONS.items():
        for name in cls.__dataclass_fields__:
            assert f"`{section}.{name}`" in doc.read_text()


# ------------------------------------------------------------------------------------------- renamed keys


def test_old_key_names_still_work_with_a_warning_naming_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('version = 1\n[metrics]\nkubelet_socket = "/k0s/pod-resources/kubelet.sock"\n')
    with pytest.warns(
        S.DeprecatedSetting, match=r"metrics.kubelet_socket is deprecated, use kubelet.pod_resources_socket"
    ):
        s = S.load(file=path)
    assert s.kubelet.pod_resources_socket == "/k0s/pod-resources/kubelet.sock"
    with pytest.warns(
        S.DeprecatedSetting, match="NODEAGENT_RUNTIME__DRIFT_POLL_S is deprecated, use NODEAGENT_WATCH__POLL_S"
    ):
        s = S.load(env={"NODEAGENT_RUNTIME__DRIFT_POLL_S": "0.25"})
    assert s.watch.poll_s == 0.25
    # precedence is kept: the environment's old name beats the file's new name
    path.write_text("version = 1\n[watch]\npoll_s = 3.0\n")
    with pytest.warns(S.DeprecatedSetting):
        assert S.load(file=path, env={"NODEAGENT_RUNTIME__DRIFT_POLL_S": "0.5"}).watch.poll_s == 0.5


@pytest.mark.parametrize(
    "text",
    [
        "version = 1\n[watch]\npoll_s = 3.0\n[runtime]\ndrift_poll_s = 2.0\n",
        "version = 1\n[runtime]\ndrift_poll_s = 2.0\n[watch]\npoll_s = 3.0\n",
    ],
)
@pytest.mark.filterwarnings("ignore::nodeagent.settings.DeprecatedSetting")
def test_old_and_new_name_in_one_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"set only watch\.poll_s"):
        S.load(file=path)


def test_the_docs_list_the_renamed_keys() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert "| `metrics.kubelet_socket` | `kubelet.pod_resources_socket` |" in doc
    assert "`NODEAGENT_RUNTIME__DRIFT_POLL_S` | `NODEAGENT_WATCH__POLL_S`" in doc
