"""Fixtures shared by the integration suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.image import BuiltImage, build_image


@pytest.fixture(scope="session")
def image() -> Iterator[BuiltImage]:
    """The nodeagent image (container/build.sh), built once for integration/deploy and integration/cluster."""
    yield from build_image()
