"""Logging set-up: structlog, JSON lines unless standard error is a terminal.

Contract: one bound logger per connection (``charger`` identity and ``ocpp`` version),
stable snake_case event names, frames only at DEBUG, id tags and secrets never in clear.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from config.settings import LogSettings


def setup_logging(settings: LogSettings) -> None:
    """Configure structlog and the standard library's root logger once."""
    level = logging.getLevelNamesMapping()[settings.level]
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; keep their noise at WARNING.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, force=True)


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context."""
    return structlog.get_logger("ocpp_lc").bind(**bound)


def mask_id_tag(tag: str | None) -> str | None:
    """An id tag as it may appear in logs: its last four characters only."""
    if tag is None:
        return None
    return "*" * max(0, len(tag) - 4) + tag[-4:] if len(tag) > 4 else "****"
