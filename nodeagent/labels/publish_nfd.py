"""Publisher: the NFD local feature file (``features.d/<name>``), read by nfd-worker's ``local`` source.

The format is GFD's file output: one ``key=value`` per line (NFD also accepts a bare ``key`` for
``true`` and ``# +expiry-time`` directives; neither is needed). Lines are sorted so the same labels always
give the same bytes and an unchanged label set writes nothing. The write is atomic through the Root.
Unlike GFD the file is not removed when the agent stops (a restart would drop and re-add every label);
``revert`` removes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodeagent.plan import Step, file_diff


def render(labels: Mapping[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in sorted(labels.items())).encode()


def parse(data: bytes) -> dict[str, str]:
    """Labels of an existing feature file (comments and directives skipped, bare keys are ``true``)."""
    labels: dict[str, str] = {}
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        labels[key] = value if sep else "true"
    return labels


def plan_step(
    path: str, existing: bytes | None, labels: Mapping[str, str], shown: Mapping[str, str] | None = None
) -> Step | None:
    """The write, if the file differs; ``shown`` are the labels as the diff shows them (a fresh
    timestamp as a placeholder, so the same node always gives the same plan)."""
    data = render(labels)
    if existing == data:
        return None
    summary = "write the NFD feature file" if existing is None else "update the NFD feature file"
    return Step(
        "write-nfd-file",
        path,
        f"{summary} ({len(labels)} labels)",
        diff=file_diff(path, existing, render(shown if shown is not None else labels)),
        payload=data,
    )
