"""isolation.logging.SecretsFilter: tokens and tickets never reach a server's log."""

from __future__ import annotations

import io
import logging
import os
import sys
import urllib.parse
from collections.abc import Iterator

import pytest

from isolation import UserContext, tokens
from isolation.logging import REDACTED, SecretsFilter, install_secrets_filter, redact_secrets


@pytest.fixture
def token() -> str:
    return tokens.dumps(UserContext.new("alice"), key=os.urandom(32), purpose="chat")


def filtered(text: str, name: str = "uvicorn.error") -> str:
    """``text`` logged as one argument, after the filter."""
    record = logging.LogRecord(name, logging.INFO, __file__, 1, "%s", (text,), None)
    assert SecretsFilter().filter(record) is True
    return record.getMessage()


def access_record(path: str) -> logging.LogRecord:
    """A record shaped as uvicorn's access logger makes it (h11_impl, httptools_impl)."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200),
        None,
    )


class TestRedact:
    @pytest.mark.parametrize(
        "line",
        [
            '127.0.0.1:1 - "WebSocket /ws?ticket={t}" [accepted]',
            '127.0.0.1:1 - "GET /x?a=1&token={t}&b=2 HTTP/1.1" 200',
            '"WebSocket /ws?ticket={e}" 403',
            "Authorization: Bearer {t}",
            "a token {t} in a message",
        ],
    )
    def test_tokens_are_masked(self, line: str, token: str) -> None:
        """Tickets and tokens are masked, raw or with encoded dots, wherever they appear."""
        message = filtered(line.format(t=token, e=token.replace(".", "%2E")))
        assert REDACTED in message
        for part in token.split(".")[2:]:
            assert part not in message

    @pytest.mark.parametrize(
        "line",
        [
            '127.0.0.1:1 - "WebSocket /ws?tick%65t=%69so1{rest}" [accepted]',
            '127.0.0.1:1 - "WebSocket /ws?tick%65t={all}" 403',
            '127.0.0.1:1 - "GET /x?next={all}&page=2 HTTP/1.1" 200',
            '127.0.0.1:1 - "GET /x?a={twice} HTTP/1.1" 200',
            '127.0.0.1:1 - "GET /ws?ticket%3D{all} HTTP/1.1" 200',
            "a ticket %69so1{rest} in a message",
        ],
        ids=["issue-shape", "all-encoded", "any-key", "twice-encoded", "encoded-equals", "prose"],
    )
    def test_decoded_before_judged(self, line: str, token: str) -> None:
        """Percent-encoded names and values (/ws?tick%65t=%69so1...) are masked too."""
        encoded = "".join(f"%{ord(char):02X}" for char in token)
        message = filtered(
            line.format(rest=token[4:], all=encoded, twice=encoded.replace("%", "%25"))
        )
        assert REDACTED in message
        decoded = urllib.parse.unquote(urllib.parse.unquote(message))
        for part in token.split(".")[1:]:
            assert part not in decoded

    @pytest.mark.parametrize(
        "name",
        ["ticket", "Ticket", "TOKEN", "access_token", "tick%65t", "T%6Fken", "api-key", "apiKey"],
    )
    def test_any_spelling_of_a_credential_name(self, name: str) -> None:
        """A credential parameter is masked whatever its case or encoding, and whatever its value."""
        message = filtered(f'"GET /x?page=2&{name}=opaque-s3cret HTTP/1.1" 200')
        assert message == f'"GET /x?page=2&{name}={REDACTED} HTTP/1.1" 200'

    @pytest.mark.parametrize(
        "line",
        [
            '127.0.0.1:1 - "GET /messages?page=2&q=hello%20world HTTP/1.1" 200',
            "why? because 100% of it is fine",
        ],
    )
    def test_ordinary_lines_are_left_alone(self, line: str) -> None:
        """Lines without a credential are left as they are, percent-escapes included."""
        assert redact_secrets(line) == line
        assert filtered(line) == line


class TestRecordShape:
    def test_uvicorn_access_formatter_still_formats(self, token: str) -> None:
        """The arguments stay a tuple, so uvicorn's AccessFormatter (which unpacks them) works."""
        uvicorn_logging = pytest.importorskip("uvicorn.logging", reason="needs uvicorn")
        record = access_record(f"/messages?token={token}&page=2")
        SecretsFilter().filter(record)
        formatter = uvicorn_logging.AccessFormatter(
            '%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False
        )
        line = formatter.format(record)
        assert line == f'127.0.0.1:5000 - "GET /messages?token={REDACTED}&page=2 HTTP/1.1" 200 OK'

    def test_a_secret_across_format_and_arguments(self) -> None:
        """A credential named in the format string with its value in an argument is masked."""
        record = logging.LogRecord(
            "app", logging.INFO, __file__, 1, "GET /x?api_key=%s&n=%d", ("opaque-s3cret", 3), None
        )
        SecretsFilter().filter(record)
        assert record.getMessage() == f"GET /x?api_key={REDACTED}&n=3"

    def test_coloured_copy_is_not_left_behind(self) -> None:
        """uvicorn's coloured message (``color_message``) cannot bring the secret back."""
        uvicorn_logging = pytest.importorskip("uvicorn.logging", reason="needs uvicorn")
        record = logging.LogRecord(
            "uvicorn.error", logging.INFO, __file__, 1, "GET /x?secret=%s", ("opaque-s3cret",), None
        )
        record.color_message = "GET /x?secret=\x1b[1m%s\x1b[0m"
        SecretsFilter().filter(record)
        formatter = uvicorn_logging.DefaultFormatter("%(message)s", use_colors=True)
        assert formatter.format(record) == f"GET /x?secret={REDACTED}"

    def test_mapping_arguments(self, token: str) -> None:
        """Records formatted from a mapping (``%(path)s``) are masked argument by argument."""
        record = logging.LogRecord(
            "app",
            logging.INFO,
            __file__,
            1,
            "%(path)s %(status)d",
            ({"path": f"/ws?ticket={token}", "status": 403},),
            None,
        )
        SecretsFilter().filter(record)
        assert record.getMessage() == f"/ws?ticket={REDACTED} 403"
        assert isinstance(record.args, dict)

    def test_traceback_and_stack_are_masked(self, token: str) -> None:
        """A token in an exception's message is masked in the logged traceback too."""
        try:
            raise ValueError(f"bad ticket {token}")
        except ValueError:
            record = logging.LogRecord(
                "uvicorn.error", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
            )
        record.stack_info = f"Stack (most recent call last):\n  handling /ws?ticket={token}"
        SecretsFilter().filter(record)
        assert record.exc_text is not None
        assert token not in record.exc_text
        assert token not in logging.Formatter().format(record)

    def test_records_without_secrets_keep_their_arguments(self) -> None:
        """Nothing to mask: the record is untouched (the same msg and args objects)."""
        args = ("127.0.0.1:5000", "GET", "/health", "1.1", 200)
        record = access_record("/health")
        record.args = args
        SecretsFilter().filter(record)
        assert record.args is args


@pytest.fixture
def restore_filters() -> Iterator[None]:
    """Remove what install_secrets_filter() attached to the loggers and handlers."""
    yield
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(logger, logging.Logger):
            continue
        for target in [logger, *logger.handlers]:
            for secrets_filter in [f for f in target.filters if isinstance(f, SecretsFilter)]:
                target.removeFilter(secrets_filter)


@pytest.mark.usefixtures("restore_filters")
class TestInstall:
    def test_uvicorn_handlers_and_loggers(self, token: str) -> None:
        """Handlers configured before the call, and records logged on uvicorn's loggers."""
        stream = io.StringIO()
        access = logging.getLogger("uvicorn.access")
        handler = logging.StreamHandler(stream)
        access.addHandler(handler)
        previous = access.level
        access.setLevel(logging.INFO)
        try:
            installed = install_secrets_filter()
            assert install_secrets_filter() is installed  # idempotent: one filter, once
            assert [f for f in access.filters if isinstance(f, SecretsFilter)] == [installed]
            assert [f for f in handler.filters if isinstance(f, SecretsFilter)] == [installed]
            access.info("%s", f"GET /ws?ticket={token}")
        finally:
            access.removeHandler(handler)
            access.setLevel(previous)
        assert stream.getvalue() == f"GET /ws?ticket={REDACTED}\n"

    def test_named_loggers(self, token: str) -> None:
        """Loggers named in the call get the filter too (gunicorn's, the app's own)."""
        stream = io.StringIO()
        logger = logging.getLogger("test_log_secrets.app")
        handler = logging.StreamHandler(stream)
        logger.addHandler(handler)
        logger.propagate = False
        try:
            install_secrets_filter("test_log_secrets.app")
            logger.warning("refused %s", token)
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
        assert stream.getvalue() == f"refused {REDACTED}\n"
