"""structlog set-up for the daemon: JSON lines on stdout when it is not a terminal (journald
takes them, one object per line), a readable console renderer on a terminal.

With JSON lines, everything the process writes is one: structlog's events, the standard
`logging` module's records (asyncpg's, asyncio's "Task exception was never retrieved", …, at
WARNING and above, as events named by their message with a `logger` field), and uncaught
exceptions (`uncaught_exception`, `thread_exception`, `unraisable_exception`). An exception is
the structured field `exception`: a list of {exc_type, exc_value, frames: [{filename, lineno,
name}]}, without local variables.

Under journald ($JOURNAL_STREAM names stdout), each line starts with its syslog priority
(`<3>` error, `<4>` warning, `<6>` info, …), which the unit's `SyslogLevelPrefix=yes` makes
journald take off and keep as the entry's priority, so `journalctl -p err` finds errors and
`journalctl -o cat` still prints pure JSON. Elsewhere the lines carry no prefix.

Every rendered line, its traceback included, goes through `keeper.secrets.scrub` last.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from keeper import secrets

JOURNAL_ENV = "JOURNAL_STREAM"
# syslog(3) priorities of structlog's levels.
PRIORITY = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "info": 6, "debug": 7}
STDLIB_FLOOR = logging.WARNING  # libraries' INFO and DEBUG records are not the keeper's story

_state = {"json": False}
log = structlog.get_logger("keeper")


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


def prioritised(renderer: structlog.types.Processor) -> structlog.types.Processor:
    """`renderer`'s line behind its syslog priority, `<N>`, for journald's SyslogLevelPrefix."""

    def render(logger: Any, name: str, event_dict: Any) -> Any:
        priority = PRIORITY.get(str(event_dict.get("level", name)), PRIORITY["info"])
        rendered = renderer(logger, name, event_dict)
        if isinstance(rendered, bytes):
            return f"<{priority}>".encode() + rendered
        return f"<{priority}>{rendered}"

    return render


def is_journal(stream: TextIO | None) -> bool:
    """Whether `stream` is connected to journald: $JOURNAL_STREAM, which systemd sets to the
    `device:inode` of the service's journal stream, names its file (a process started from
    the service with its output redirected inherits the variable, not the stream)."""
    value = os.environ.get(JOURNAL_ENV, "")
    if stream is None or not value:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file behind it (a test's capture)
        return False
    return value == f"{info.st_dev}:{info.st_ino}"


def json_lines() -> bool:
    """Whether `configure` set up JSON lines (the daemon's log is not a terminal)."""
    return _state["json"]


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the process (`fmt`: auto, json or console), and with JSON lines
    the standard `logging` module and the hooks of uncaught exceptions too."""
    stream = sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    render = scrubbed(renderer)
    if is_journal(stream):
        render = prioritised(render)
    exceptions: structlog.types.Processor = (
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if as_json
        else structlog.processors.format_exc_info
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    threshold = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, exceptions, render],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _state["json"] = as_json
    if as_json:
        _route_stdlib(stream, max(threshold, STDLIB_FLOOR), shared, [exceptions, render])
        sys.excepthook = _uncaught
        threading.excepthook = _thread_died
        sys.unraisablehook = _unraisable


def _route_stdlib(
    stream: TextIO,
    threshold: int,
    shared: list[structlog.types.Processor],
    final: list[structlog.types.Processor],
) -> None:
    """The root logger's records rendered as structlog's lines, on `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):  # keeper.secrets' plain-text fallback among them
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)


def _uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    try:
        log.critical("uncaught_exception", exc_info=(exc_type, exc, tb))
    except Exception:  # the log itself failed: Python's text, scrubbed, rather than nothing
        secrets.excepthook(exc_type, exc, tb)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else str(threading.get_ident())
    info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    try:
        log.critical("thread_exception", thread=name, exc_info=info)
    except Exception:
        secrets.thread_excepthook(args)


def _unraisable(unraisable: Any) -> None:
    try:
        what = repr(unraisable.object) if unraisable.object is not None else None
    except Exception:
        what = "<object repr() failed>"
    info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    try:
        log.error(
            "unraisable_exception",
            message=unraisable.err_msg or "Exception ignored in",
            object=what,
            exc_info=info,
        )
    except Exception:
        secrets.unraisablehook(unraisable)
