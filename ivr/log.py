"""structlog set-up: one JSON line per event (a console renderer on a TTY).

The JSON is compact (no spaces) and rendered straight to bytes by orjson when it is
installed (a default dependency), else by the standard library's ``json`` in the same form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

Serializer = Callable[..., bytes]


def stdlib_dumps(obj: Any, **kw: Any) -> bytes:
    """The standard library's JSON, as compact as orjson's; ASCII, so it always encodes."""
    return json.dumps(obj, separators=(",", ":"), **kw).encode()


def json_serializer() -> Serializer:
    """orjson's ``dumps`` when orjson is installed, else :func:`stdlib_dumps`.

    A value orjson refuses (a lone surrogate, a key that is not a string, an integer past
    64 bits) is rendered by the standard library instead: a log line never raises.
    """
    try:
        import orjson
    except ImportError:
        return stdlib_dumps
    dumps = orjson.dumps

    def serialize(obj: Any, **kw: Any) -> bytes:
        try:
            return dumps(obj, **kw)
        except TypeError:  # orjson.JSONEncodeError
            return stdlib_dumps(obj, **kw)

    return serialize


class LevelFilter:
    """Drops the lines under ``level``. Loggers are cached on first use, with the
    processors of that moment, so a reload changes this filter's level (:func:`set_level`)
    rather than configuring structlog again."""

    def __init__(self, level: str) -> None:
        self.level = _LEVELS.get(level, logging.INFO)

    def __call__(self, _logger: Any, method: str, event: Any) -> Any:
        """The processor: the event, or DropEvent under the level."""
        if _LEVELS.get(method, logging.CRITICAL) < self.level:
            raise structlog.DropEvent
        return event


class UtcTimeStamper:
    """structlog's ``TimeStamper(fmt="iso", utc=True)``, the same text
    (``2026-12-03T08:11:14.151654Z``; no fraction at a whole second) at a third of its
    cost: the text of the current second is kept while it lasts."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._second: tuple[int, str] = (-1, "")  # one tuple: replaced whole, never torn

    def __call__(self, _logger: Any, _method: str, event: Any) -> Any:
        """The processor: ``timestamp`` set to now."""
        second, us = divmod(self._clock_ns() // 1000, 1_000_000)
        cached, text = self._second
        if second != cached:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        event["timestamp"] = f"{text}.{us:06d}Z" if us else f"{text}Z"
        return event


def set_level(level: str) -> None:
    """Change the level of the loggers :func:`configure` set up (SIGHUP's reload)."""
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, LevelFilter):
            processor.level = _LEVELS.get(level, logging.INFO)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once, at start-up. Logs go to stderr unless ``stream`` is given;
    :func:`set_level` changes the level later."""
    out = stream if stream is not None else sys.stderr
    renderer: structlog.types.Processor
    factory: Callable[..., Any]
    binary = getattr(out, "buffer", None)
    if out.isatty():
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(out)
    elif binary is not None:
        out.flush()  # what was written as text stays before the first line
        renderer = structlog.processors.JSONRenderer(serializer=json_serializer())
        factory = structlog.BytesLoggerFactory(binary)
    else:  # a text-only stream (io.StringIO)
        serialize = json_serializer()
        renderer = structlog.processors.JSONRenderer(
            serializer=lambda obj, **kw: serialize(obj, **kw).decode())
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=[
            LevelFilter(level),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            UtcTimeStamper(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        # Debug calls are filtered by LevelFilter (the level can change); a debug call is
        # rare on the hot path.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
