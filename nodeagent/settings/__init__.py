"""One frozen, versioned settings tree: defaults here < TOML file < NODEAGENT_* environment < CLI flags.

The package's parts, each with one job:

- ``sections.py``: the typed sections, every key's default, meaning and check, and the ``Settings`` tree;
- ``loading.py``: ``load`` (file, environment, flags; renamed keys), with errors naming file and key;
- ``scoping.py``: a subsystem's view of the tree (``scoped``), which refuses undeclared sections;
- ``docs.py``: docs/configuration.md (``python -m nodeagent.settings``).

The public names are importable from ``nodeagent.settings`` itself.
"""

from __future__ import annotations

from nodeagent.settings.docs import render_docs
from nodeagent.settings.loading import ENV_PREFIX, RENAMED, DeprecatedSetting, Sources, env_name, load
from nodeagent.settings.scoping import UndeclaredSection, scoped, whole_settings
from nodeagent.settings.sections import (
    SECTIONS,
    SETTINGS_VERSION,
    AgentSettings,
    CdiSettings,
    Check,
    DriverSettings,
    GpuHealthSettings,
    GpuSettings,
    KubeletSettings,
    KubeSettings,
    LabelsSettings,
    MetricsSettings,
    MigSettings,
    RuntimeSettings,
    Settings,
    SimulationSettings,
    WatchSettings,
    at_least,
    changed_sections,
    opt,
    replace,
)

__all__ = [
    "ENV_PREFIX",
    "RENAMED",
    "SECTIONS",
    "SETTINGS_VERSION",
    "AgentSettings",
    "CdiSettings",
    "Check",
    "DeprecatedSetting",
    "DriverSettings",
    "GpuHealthSettings",
    "GpuSettings",
    "KubeSettings",
    "KubeletSettings",
    "LabelsSettings",
    "MetricsSettings",
    "MigSettings",
    "RuntimeSettings",
    "Settings",
    "SimulationSettings",
    "Sources",
    "UndeclaredSection",
    "WatchSettings",
    "at_least",
    "changed_sections",
    "env_name",
    "load",
    "opt",
    "render_docs",
    "replace",
    "scoped",
    "whole_settings",
]
