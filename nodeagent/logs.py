"""structlog setup: JSON lines when stdout is not a terminal (containers, systemd), readable on a tty.

Event names are snake_case facts (``runtime_config_written``) with values as key-value fields; each
subsystem's logger is bound with ``subsystem=...`` (see subsystem.BaseSubsystem).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(fmt: Literal["auto", "json", "console"] = "auto", level: str = "info", *, stream: object = None) -> None:
    """Configure structlog (and route stdlib logging through the same renderer)."""
    out = stream if stream is not None else sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(LEVELS.get(level, logging.INFO), logging.WARNING))
