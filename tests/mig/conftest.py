"""In-process ``nodeagent`` commands configure structlog onto pytest's captured stderr; reset it after each
test so a later test does not log into a closed stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
