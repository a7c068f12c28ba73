"""A log filter that keeps tokens and tickets out of a server's log.

uvicorn logs every request line and every WebSocket handshake with its query
string (``"WebSocket /ws?ticket=..." [accepted]``), so a ticket in the URL
lands in the log, where anyone who reads logs could replay it while it lives.
:class:`SecretsFilter` rewrites each record before a handler formats it. Apps
decode query strings, so the filter does too before it judges them: a name or a
value percent-encoded once or several times is masked like a plain one.

The record keeps its shape where it can: each argument is masked on its own, so
formatters that read ``record.args`` (uvicorn's access formatter unpacks the
request line from them) still work. Only a secret that spans the format string
and its arguments makes the filter replace the message with its masked text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "SecretsFilter", "install_secrets_filter", "redact_secrets"]

REDACTED: Final = "[redacted]"
"""What a masked secret reads as in the log."""

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

# The loggers of uvicorn (its access lines and WebSocket handshakes), of this library,
# and the root logger, whose handlers also see what other loggers propagate.
_DEFAULT_LOGGERS: Final = (
    "",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "isolation",
)


def redact_secrets(text: str) -> str:
    """Return ``text`` with credential query values, tokens and bearer credentials masked.

    Query strings are percent-decoded before they are judged (``/ws?tick%65t=%69so1...``
    is a ticket): a parameter is masked when its decoded name, in any case, is a
    credential's (``ticket``, ``token``, ``secret``, ``api_key``, ...) or its decoded
    value holds a token, whatever its name. Any other word that decodes to a token
    of :mod:`isolation.tokens` is masked whole, and so is a ``Bearer`` credential.
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


def _redact_arg(arg: object) -> object:
    """``arg`` masked, or ``arg`` itself when its text holds no secret (numbers stay numbers)."""
    if isinstance(arg, str):
        return redact_secrets(arg)
    if isinstance(arg, int | float | bool) or arg is None:
        return arg
    text = str(arg)
    masked = redact_secrets(text)
    return arg if masked == text else masked


class SecretsFilter(logging.Filter):
    """Mask tokens, tickets and credential parameters in each record; never drop one.

    Attach it to a handler (it then sees every record the handler emits) or to a
    logger (the records logged on that logger), or call :func:`install_secrets_filter`.
    The message, its arguments, the formatted traceback and the stack are masked.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if redact_secrets(message) != message:
            _redact_message(record, message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return True


def _redact_message(record: logging.LogRecord, message: str) -> None:
    """Mask the arguments one by one when that suffices, else the whole message."""
    args = record.args
    masked_args: tuple[object, ...] | Mapping[str, object] | None = None
    if isinstance(args, tuple) and args:
        masked_args = tuple(_redact_arg(arg) for arg in args)
    elif isinstance(args, Mapping) and args:
        masked_args = {key: _redact_arg(value) for key, value in args.items()}
    if masked_args is not None:
        record.args = masked_args
        try:
            masked = record.getMessage()
        except (TypeError, ValueError):  # a masked number under %d: mask the text instead
            masked = None
        if masked is not None and redact_secrets(masked) == masked:
            return  # the format string and the masked arguments hold no secret
    record.msg, record.args = redact_secrets(message), ()
    # uvicorn formats a coloured copy of the message from this when it writes to a terminal.
    record.__dict__.pop("color_message", None)


def install_secrets_filter(*loggers: str) -> SecretsFilter:
    """Attach one :class:`SecretsFilter` to uvicorn's loggers, this library's, the root
    logger, and the ``loggers`` named, and to each of their handlers. Idempotent.

    A logger's filter sees only the records logged on that logger; a handler's sees
    every record it emits, those propagated from child loggers too. So both get it:
    the handlers configured before the call (uvicorn configures its own before it
    imports the app), and the loggers, for handlers added later. Call it again from
    the app's lifespan: a server may set up its handlers after the import.

    Returns:
        The filter installed (the same one on every call).
    """
    for name in (*_DEFAULT_LOGGERS, *loggers):
        logger = logging.getLogger(name)
        targets: list[logging.Filterer] = [logger, *logger.handlers]
        for target in targets:
            if not any(isinstance(f, SecretsFilter) for f in target.filters):
                target.addFilter(_FILTER)
    return _FILTER


_FILTER: Final = SecretsFilter()
SecretsFilter.__module__ = "isolation.logging"  # its public home
