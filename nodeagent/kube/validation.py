"""Kubernetes label key and value rules, exactly as the API server applies them.

apimachinery ``validation.IsQualifiedName`` (keys) and ``IsValidLabelValue`` (values): a key is an
optional DNS-1123 subdomain prefix of at most 253 characters, a ``/``, and a name of at most 63
characters of ``[A-Za-z0-9_.-]`` that starts and ends alphanumeric; a value is empty or at most 63
characters of the same alphabet, starting and ending alphanumeric. Pure; used by the labelers (drop a bad
label with its reason) and by the test API server (422).
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

NAME_MAX = 63
VALUE_MAX = 63
PREFIX_MAX = 253


def key_problems(key: str) -> list[str]:
    """Why ``key`` is not a valid label key (empty list when it is), in the API server's words."""
    parts = key.split("/")
    if len(parts) == 1:
        prefix, name = "", parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
    else:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end"
            " with an alphanumeric character with an optional DNS subdomain prefix and '/'"
        ]
    problems = []
    if prefix:
        if len(prefix) > PREFIX_MAX:
            problems.append(f"prefix part must be no more than {PREFIX_MAX} characters")
        if not _DNS1123_SUBDOMAIN.match(prefix):
            problems.append(
                "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters,"
                " '-' or '.', and must start and end with an alphanumeric character"
            )
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > NAME_MAX:
        problems.append(f"name part must be no more than {NAME_MAX} characters")
    if name and not _NAME.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an"
            " alphanumeric character"
        )
    return problems


def value_problems(value: str) -> list[str]:
    """Why ``value`` is not a valid label value (empty list when it is)."""
    problems = []
    if len(value) > VALUE_MAX:
        problems.append(f"must be no more than {VALUE_MAX} characters")
    if not _VALUE.match(value):
        problems.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and"
            " must start and end with an alphanumeric character"
        )
    return problems


def is_dns1123_subdomain(name: str) -> bool:
    return len(name) <= PREFIX_MAX and bool(_DNS1123_SUBDOMAIN.match(name))
