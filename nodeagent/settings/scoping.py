"""A subsystem's view of the settings: the same typed tree, where only its declared sections can be read."""

from __future__ import annotations

import dataclasses
from typing import Any

from nodeagent.settings.sections import SECTIONS, Settings


class UndeclaredSection(LookupError):
    """A subsystem read a settings section it does not declare: a programming error (its declaration is
    wrong, and a reload of that section would not restart it)."""


class _Undeclared:
    """Stands in for a section its reader did not declare; any use of it raises UndeclaredSection."""

    def __init__(self, section: str, reader: str, declared: tuple[str, ...]) -> None:
        self._what = (section, reader, declared)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and friends probe dunders: stay an ordinary object to them
            raise AttributeError(attr)
        section, reader, declared = self._what
        raise UndeclaredSection(
            f"{reader} read {section}.{attr} but declares only the settings sections "
            f"{', '.join(declared) or '(none)'}; add {section!r} to its declaration"
        )

    def __repr__(self) -> str:
        return f"<settings section {self._what[0]!r}, not declared by {self._what[1]}>"


def scoped(settings: Settings, sections: tuple[str, ...], *, reader: str) -> Settings:
    """A view of ``settings`` where only ``sections`` can be read (same attribute syntax, same type)."""
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"{reader} declares unknown settings sections {unknown}; valid: {', '.join(SECTIONS)}")
    whole = whole_settings(settings)
    hidden: dict[str, Any] = {name: _Undeclared(name, reader, sections) for name in SECTIONS if name not in sections}
    view = dataclasses.replace(whole, **hidden)
    object.__setattr__(view, "_whole", whole)  # a view of a view starts again from the whole tree
    return view


def whole_settings(settings: Settings) -> Settings:
    """The complete settings a view was made from (``settings`` itself when it is no view)."""
    whole: Settings = getattr(settings, "_whole", settings)
    return whole
