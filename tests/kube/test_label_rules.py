"""Label key and value rules as the API server applies them (apimachinery validation)."""

from __future__ import annotations

import pytest

from nodeagent.kube.validation import key_problems, value_problems


@pytest.mark.parametrize(
    "key",
    ["nvidia.com/gpu.product", "app", "a/b", "feature.node.kubernetes.io/pci-10de.present", "x" * 63, "a_b.c-d"],
)
def test_valid_keys(key: str) -> None:
    assert key_problems(key) == []


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "name part must be non-empty"),
        ("/a", "prefix part must be non-empty"),
        ("a/b/c", "qualified name"),
        ("Nvidia.com/x", "lowercase RFC 1123"),
        ("nvidia.com/" + "x" * 64, "no more than 63"),
        ("x" * 254 + "/a", "no more than 253"),
        ("nvidia.com/-x", "start and end with an alphanumeric"),
        ("nvidia.com/x y", "alphanumeric characters"),
    ],
)
def test_invalid_keys(key: str, why: str) -> None:
    assert any(why in p for p in key_problems(key))


@pytest.mark.parametrize("value", ["", "true", "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "1.2_3", "v" * 63])
def test_valid_values(value: str) -> None:
    assert value_problems(value) == []


@pytest.mark.parametrize("value", ["v" * 64, "-a", "a-", "a b", "a/b", "ä"])
def test_invalid_values(value: str) -> None:
    assert value_problems(value)
