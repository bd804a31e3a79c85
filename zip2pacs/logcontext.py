"""What the libraries log, in the watcher's terms: named after the ZIP and entry being handled, at the right level.

pydicom and pynetdicom log for programmers: a file pydicom cannot re-encode is an ERROR with three tracebacks,
a peer that is down is two ERROR lines before the watcher's own, and a pydicom warning names no file. The
sender and the delivery say which ZIP and entry they handle (``about_zip``, ``about``); ``LibraryFilter``, on
the handlers, prefixes library records with it, and turns what the watcher handles and reports in its own
line into DEBUG lines without a traceback.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_ZIP: contextvars.ContextVar[tuple[str, Mapping[Path, str]] | None] = contextvars.ContextVar("zip", default=None)
_ENTRY: contextvars.ContextVar[Path | str | None] = contextvars.ContextVar("entry", default=None)

# pynetdicom's account of conditions the watcher handles and reports in its own words (association.py
# names a refused connection, a rejection or a TLS failure; sender.py an abort, a timeout or a file it
# cannot encode): logger -> how its messages begin. Anything else pynetdicom says keeps its level.
HANDLED: dict[str, tuple[str, ...]] = {
    "pynetdicom.transport": ("Association request failed", "TCP Initialisation Error"),
    "pynetdicom.acse": (
        "Association Rejected",
        "Result: ",
        "Reason: ",
        "Association Aborted",
        "No accepted presentation contexts",
        "ACSE timeout reached",
        "Received an invalid A-ASSOCIATE response",
        "Aborting Association",
    ),
    "pynetdicom.association": (
        "Connection closed while waiting for DIMSE message",
        "DIMSE timeout reached",
        "Network timeout reached",
        "Failed to encode the supplied dataset",
    ),
    "pynetdicom.dsutils": ("pydicom.write_dataset() failed",),
    "pynetdicom.dul": ("Connection closed before the entire PDU was received",),
    # watchdog 3+ says this when its inotify thread is stopped while a move out of the folder is being paired:
    # harmless at a shutdown, and the rescan is the source of truth anyway.
    "watchdog.observers.inotify": ("InotifyEmitter.queue_events() called when the thread is inactive",),
}
LIBRARIES = ("pydicom", "pynetdicom", "watchdog", "py.warnings")
# pydicom quotes the value it finds invalid: a patient's name or birth date must not reach the log.
_QUOTED_VALUE = re.compile(r"(Invalid value for VR \w+): .*", re.DOTALL)


@contextmanager
def about_zip(name: str, names: Mapping[Path, str] | None = None) -> Iterator[None]:
    """Name the ZIP this thread handles; ``names`` maps extracted paths to their names in the ZIP."""
    token = _ZIP.set((name, names if names is not None else {}))
    try:
        yield
    finally:
        _ZIP.reset(token)


@contextmanager
def about(entry: Path | str) -> Iterator[None]:
    """Name the entry this thread handles: its name in the ZIP, or its extracted path."""
    token = _ENTRY.set(entry)
    try:
        yield
    finally:
        _ENTRY.reset(token)


def current() -> str:
    """Return ``NAME.zip: entry DIR/FILE`` for what this thread handles, as much of it as is known, or ""."""
    zip_context, entry = _ZIP.get(), _ENTRY.get()
    parts = []
    if zip_context is not None:
        parts.append(zip_context[0])
    if isinstance(entry, Path):
        known = zip_context[1] if zip_context is not None else {}
        parts.append(f"entry {known.get(entry, entry.name)}")
    elif entry:
        parts.append(f"entry {entry}")
    return ": ".join(parts)


def is_handled(record: logging.LogRecord) -> bool:
    """Return True for a library record about a condition the watcher reports itself, or a harmless one."""
    beginnings = HANDLED.get(record.name)
    if beginnings is None or record.levelno < logging.WARNING:
        return False
    if isinstance(record.msg, BaseException):  # LOGGER.exception(exc) after one of the lines below
        return True
    return str(record.msg).startswith(beginnings)


class LibraryFilter(logging.Filter):
    """On a handler: name library records after the ZIP and entry, and demote what the watcher handles.

    A demoted record becomes a DEBUG line without its traceback, shown only when ``debug`` (handlers check
    levels before filters). A record is changed once, by the first handler that sees it: handlers share it.
    """

    def __init__(self, debug: bool = False):
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "zip2pacs_seen", False):
            setattr(record, "zip2pacs_seen", True)  # noqa: B010 - LogRecord has no such attribute
            if record.name.startswith(LIBRARIES):
                _rewrite(record)
        return self.debug or not getattr(record, "zip2pacs_demoted", False)


def _rewrite(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a library's own formatting bug: leave the record to logging's error handling
        return
    if is_handled(record):
        setattr(record, "zip2pacs_demoted", True)  # noqa: B010
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        message = message.split("\n", 1)[0]  # pydicom puts a traceback in some of its exceptions' text
    message = _QUOTED_VALUE.sub(r"\1 (the value is not logged)", message)
    if record.name != "py.warnings":
        message = f"{record.name.split('.')[0]}: {message}"
    where = current()
    record.msg, record.args = f"{where}: {message}" if where else message, None


# --- Python warnings ---------------------------------------------------------------------------------------

_WARNINGS = logging.getLogger("py.warnings")
_last_pydicom = threading.local()  # the last message pydicom logged in this thread


class _PydicomEcho(logging.Handler):
    """Remember pydicom's last message per thread: pydicom logs each warning, then also warns with it."""

    def emit(self, record: logging.LogRecord) -> None:
        _last_pydicom.message = record.getMessage()


_ECHO = _PydicomEcho(logging.WARNING)
_previous: list[Callable[..., None]] = []  # the showwarning that capture_warnings() replaced


def _show(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = str(message)
    if getattr(_last_pydicom, "message", None) == text:
        _last_pydicom.message = None  # already in the log, from pydicom's logger
        return
    _WARNINGS.warning("%s: %s", category.__name__, text)


def capture_warnings() -> None:
    """Send Python warnings to the log, one line each (not pydicom's second copy), instead of the console."""
    if warnings.showwarning is not _show:
        _previous[:] = [warnings.showwarning]
        warnings.showwarning = _show
    pydicom_logger = logging.getLogger("pydicom")
    if _ECHO not in pydicom_logger.handlers:
        pydicom_logger.addHandler(_ECHO)


def release_warnings() -> None:
    """Undo capture_warnings()."""
    if warnings.showwarning is _show and _previous:
        warnings.showwarning = _previous.pop()
    logging.getLogger("pydicom").removeHandler(_ECHO)
