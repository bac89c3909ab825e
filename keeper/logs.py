"""structlog set-up for the daemon: JSON lines on stdout when it is not a terminal (journald
takes them, one object per line), a readable console renderer on a terminal.

Every rendered line, its traceback included, goes through `keeper.secrets.scrub` last.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from keeper import secrets


def scrubbed(renderer: structlog.types.Processor) -> structlog.types.Processor:
    """`renderer` with the registered secrets taken out of what it renders.

    The whole rendered line is scrubbed, not the event's values one by one: `format_exc_info`
    has turned the traceback into text by then, and a secret may sit anywhere in it.
    """

    def render(logger: Any, name: str, event_dict: Any) -> Any:
        rendered = renderer(logger, name, event_dict)
        if isinstance(rendered, bytes):
            return secrets.scrub_bytes(rendered)
        return secrets.scrub(rendered) if isinstance(rendered, str) else rendered

    return render


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the process (`fmt`: auto, json or console)."""
    stream = sys.stdout
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrubbed(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
