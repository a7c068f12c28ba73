"""A log filter that keeps tokens and tickets out of the server's log.

uvicorn logs every request line and every WebSocket handshake with its query
string (``"WebSocket /ws?ticket=..." [accepted]``), so a ticket in the URL
would land in the log, where anyone who reads logs could replay it while it
lives. The filter rewrites each record before a handler formats it. The app
decodes query strings, so the filter does too before it judges them: a name or
value percent-encoded once or several times is masked like a plain one.
"""

from __future__ import annotations

import logging
import re
from typing import Final
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "RedactSecrets", "install_log_filter", "redact"]

REDACTED: Final = "[redacted]"

# The value of a credential-looking query parameter, raw or percent-encoded.
_QUERY: Final = re.compile(r"(?i)((?:ticket|token|access_token|authorization)(?:=|%3D))[^&\s\"'#]*")
# Any token of isolation.tokens (tickets included): "iso1.<purpose>.<payload>.<signature>",
# with its dots raw or percent-encoded.
_TOKEN: Final = re.compile(r"(?i)iso1(?:\.|%2e)[A-Za-z0-9_\-%.]*")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)\S+")
# A query string, up to what ends a URL in a log line.
_QUERY_STRING: Final = re.compile(r"\?([^\s\"'#<>]*)")
# Parameter names whose value is a credential, whatever the value looks like.
_SECRET_NAME: Final = re.compile(
    r"(?i)ticket|token|secret|passw|auth|session|signature|api[_-]?key|credential"
)
# A word with a percent-escape: decoded, it may be a token in disguise.
_ENCODED_WORD: Final = re.compile(r"(?<!\S)\S*%[0-9A-Fa-f]{2}\S*")  # from a word's start: linear
# Percent-decoding rounds: enough for a value encoded twice or thrice, and bounded.
_MAX_DECODES: Final = 4

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
    """Return ``text`` with credential query values, tokens and bearer credentials masked.

    Query strings are percent-decoded before they are judged (``/ws?tick%65t=%69so1...``
    is a ticket): a parameter is masked when its decoded name is a credential's
    (``ticket``, ``token``, ...) or its decoded value holds a token, whatever its name.
    Any other word that decodes to a token is masked whole.
    """
    text = _QUERY_STRING.sub(_redact_query, text)
    text = _redact_plain(text)
    return _ENCODED_WORD.sub(_redact_encoded_word, text)


def _redact_plain(text: str) -> str:
    text = _QUERY.sub(rf"\1{REDACTED}", text)
    text = _TOKEN.sub(REDACTED, text)
    return _BEARER.sub(rf"\1{REDACTED}", text)


def _decoded(text: str) -> str:
    """``text`` percent-decoded until it stops changing (at most a few rounds)."""
    for _ in range(_MAX_DECODES):
        decoded = unquote_plus(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def _holds_secret(text: str) -> bool:
    decoded = _decoded(text)
    return _redact_plain(decoded) != decoded


def _redact_query(match: re.Match[str]) -> str:
    parts = re.split(r"([&;])", match.group(1))
    for i, part in enumerate(parts):
        if part in ("&", ";") or not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:  # no raw "=": perhaps an encoded one ("ticket%3Diso1...")
            if _holds_secret(part):
                parts[i] = REDACTED
        elif value and (_SECRET_NAME.search(_decoded(name)) or _holds_secret(value)):
            parts[i] = f"{name}={REDACTED}"
    return "?" + "".join(parts)


def _redact_encoded_word(match: re.Match[str]) -> str:
    word = match.group(0)
    return REDACTED if _holds_secret(word) else word


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
