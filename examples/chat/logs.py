"""A log filter that keeps tokens and tickets out of the server's log.

uvicorn logs every request line and every WebSocket handshake with its query
string (``"WebSocket /ws?ticket=..." [accepted]``), so a ticket in the URL
would land in the log, where anyone who reads logs could replay it while it
lives. The filter rewrites each record before a handler formats it.
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["REDACTED", "RedactSecrets", "install_log_filter", "redact"]

REDACTED: Final = "[redacted]"

# The value of a credential-looking query parameter, raw or percent-encoded.
_QUERY: Final = re.compile(r"(?i)((?:ticket|token|access_token|authorization)(?:=|%3D))[^&\s\"'#]*")
# Any token of isolation.tokens (tickets included): "iso1.<purpose>.<payload>.<signature>",
# with its dots raw or percent-encoded.
_TOKEN: Final = re.compile(r"(?i)iso1(?:\.|%2e)[A-Za-z0-9_\-%.]*")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)\S+")

# uvicorn's loggers, this example's, and the library's: their handlers get the filter too.
_LOGGERS: Final = (
    "",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "examples.chat",
    "isolation",
)


def redact(text: str) -> str:
    """Return ``text`` with credential query values, tokens and bearer credentials masked."""
    text = _QUERY.sub(rf"\1{REDACTED}", text)
    text = _TOKEN.sub(REDACTED, text)
    return _BEARER.sub(rf"\1{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Rewrite a record's message (and its traceback text) with :func:`redact`; never drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_filter() -> RedactSecrets:
    """Attach one :class:`RedactSecrets` to the server's loggers and their handlers. Idempotent.

    A logger's filter sees only the records logged on that logger; a handler's
    sees every record it emits, also those propagated from child loggers. So
    both get it: the handlers uvicorn configured before importing the app, and
    the loggers for handlers added later.
    """
    installed = _FILTER
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        targets: list[logging.Filterer] = [logger, *logger.handlers]
        for target in targets:
            if not any(isinstance(f, RedactSecrets) for f in target.filters):
                target.addFilter(installed)
    return installed


_FILTER: Final = RedactSecrets()
