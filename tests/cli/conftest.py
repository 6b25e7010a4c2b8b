"""In-process ``nodeagent`` commands configure logging onto pytest's captured streams; reset it after each
test so that a later test (here or in another directory) does not log into a closed stream."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
