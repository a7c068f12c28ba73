"""Logging: the context filter, named loggers, and the id redaction hook."""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterator

import pytest

import isolation.logging as ilog
from isolation import (
    ConfigurationError,
    ContextExpiredError,
    ContextSwitchError,
    InvalidContextError,
    UserContext,
    scope,
)
from isolation._redact import redact as _redact_id
from isolation.testing import FakeClock

KEY = b"k" * 32


@pytest.fixture(autouse=True)
def restore_redactor() -> Iterator[None]:
    """Every test leaves the process-wide redactor as it found it."""
    previous = ilog.set_redactor(None)
    try:
        yield
    finally:
        ilog.set_redactor(previous)


def stamp() -> logging.LogRecord:
    """Make a record and pass it through a ContextFilter."""
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    assert ilog.ContextFilter().filter(record) is True
    return record


def fields(record: logging.LogRecord) -> tuple[str, str, str]:
    return record.user_id, record.tenant_id, record.request_id  # type: ignore[attr-defined]


class TestContextFilter:
    def test_outside_a_scope(self) -> None:
        """Outside any scope the fields are "-" so format strings never fail."""
        assert fields(stamp()) == ("-", "-", "-")

    def test_inside_a_scope(self) -> None:
        """Inside a scope the record carries the user, tenant and request id."""
        ctx = UserContext.new("alice", tenant_id="acme")
        with scope(ctx):
            assert fields(stamp()) == ("alice", "acme", ctx.request_id)
        assert fields(stamp()) == ("-", "-", "-")

    def test_without_tenant(self) -> None:
        """A context without a tenant stamps tenant_id "-"."""
        ctx = UserContext.new("alice")
        with scope(ctx):
            assert fields(stamp()) == ("alice", "-", ctx.request_id)

    def test_after_the_scope_ended_in_a_copy(self) -> None:
        """In a copy of an ended scope the filter stamps "-", never the stale user."""
        with scope(UserContext.new("alice")):
            copied = contextvars.copy_context()
        assert fields(copied.run(stamp)) == ("-", "-", "-")

    def test_expired_scope_still_exiting_keeps_ids(self, fake_clock: FakeClock) -> None:
        """Cleanup log lines of an expired scope stay attributable to its request."""
        ctx = UserContext.new("alice", ttl=1)
        stamped: list[tuple[str, str, str]] = []
        with pytest.raises(ContextExpiredError), scope(ctx) as s:
            s.on_close(lambda exc: stamped.append(fields(stamp())))
            fake_clock.advance(1)
        assert stamped == [("alice", "-", ctx.request_id)]

    def test_through_a_handler(self, caplog: pytest.LogCaptureFixture) -> None:
        """Attached to a handler, the filter makes the ids usable in a format string."""
        handler = caplog.handler
        handler.addFilter(ilog.ContextFilter())
        handler.setFormatter(logging.Formatter("%(user_id)s %(request_id)s %(message)s"))
        ctx = UserContext.new("alice")
        with caplog.at_level(logging.INFO, logger="app"), scope(ctx):
            logging.getLogger("app").info("hello")
        assert caplog.text.strip() == f"alice {ctx.request_id} hello"


class TestLoggers:
    @pytest.mark.parametrize(
        "part", ["context", "factories", "sessions", "events", "report", "tokens"]
    )
    def test_named_loggers(self, part: str) -> None:
        """Each part logs under isolation.<part>."""
        assert ilog._get_logger(part).name == f"isolation.{part}"

    def test_unknown_part_refused(self) -> None:
        """An unknown part is a ConfigurationError listing the known ones."""
        with pytest.raises(ConfigurationError, match="expected one of"):
            ilog._get_logger("nope")


class TestRedaction:
    def test_set_redactor_returns_previous(self) -> None:
        """set_redactor() returns what was installed, so callers can restore it."""
        first = str.upper
        assert ilog.set_redactor(first) is None
        assert ilog.set_redactor(None) is first
        assert _redact_id("alice") == "alice"
        assert _redact_id(None) == "-"

    def test_redactor_applies_to_log_records(self) -> None:
        """The filter stamps redacted user and tenant ids; the request id stays as is."""
        ilog.set_redactor(lambda value: f"<{len(value)}>")
        ctx = UserContext.new("alice@example.com", tenant_id="acme")
        with scope(ctx):
            assert fields(stamp()) == ("<17>", "<4>", ctx.request_id)

    def test_hmac_redactor_in_records(self) -> None:
        """hmac_redactor shows ids as stable keyed hashes, never the address itself."""
        redactor = ilog.hmac_redactor(KEY)
        ilog.set_redactor(redactor)
        ctx = UserContext.new("alice@example.com", tenant_id="acme")
        with scope(ctx):
            user_id, tenant_id, _ = fields(stamp())
        assert re.fullmatch(r"u:[0-9a-f]{16}", user_id)
        assert user_id == redactor("alice@example.com")
        assert tenant_id == redactor("acme")
        assert user_id != tenant_id
        assert "alice" not in user_id

    def test_hmac_redactor_depends_on_key(self) -> None:
        """Different keys give different hashes; prefix and length are configurable."""
        a = ilog.hmac_redactor(KEY)("alice")
        b = ilog.hmac_redactor(b"x" * 32)("alice")
        assert a != b
        custom = ilog.hmac_redactor(KEY, prefix="id=", length=8)("alice")
        assert re.fullmatch(r"id=[0-9a-f]{8}", custom)
        assert ilog.hmac_redactor(KEY)("\ud800")  # lone surrogates hash, never crash

    @pytest.mark.parametrize(
        ("key", "length"), [(b"short", 16), ("k" * 32, 16), (KEY, 7), (KEY, 65)]
    )
    def test_hmac_redactor_arguments_checked(self, key: object, length: int) -> None:
        """The key must be at least 16 bytes and the length 8 to 64."""
        with pytest.raises(ConfigurationError):
            ilog.hmac_redactor(key, length=length)  # type: ignore[arg-type]

    def test_redactor_applies_to_switch_error(self) -> None:
        """ContextSwitchError names both principals through the redactor."""
        ilog.set_redactor(ilog.hmac_redactor(KEY))
        with (
            scope(UserContext.new("alice@example.com", tenant_id="acme")),
            pytest.raises(ContextSwitchError) as info,
            scope(UserContext.new("bob@example.com", tenant_id="acme")),
        ):
            pass
        message = str(info.value)
        assert "example.com" not in message
        assert "acme" not in message
        assert _redact_id("alice@example.com") in message
        assert _redact_id("bob@example.com") in message

    @pytest.mark.parametrize("field", ["user_id", "tenant_id"])
    def test_redactor_applies_to_invalid_context_error(self, field: str) -> None:
        """An invalid user or tenant id is quoted redacted; other fields are not ids."""
        ilog.set_redactor(lambda value: "[redacted]")
        bad = "alice@example.com\u202e"
        kwargs = {"user_id": "ok", field: bad}
        with pytest.raises(InvalidContextError) as info:
            UserContext.new(**kwargs)  # type: ignore[arg-type]
        assert info.value.value_prefix.startswith("'[redacted]'")
        assert "alice" not in str(info.value)
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("ok", roles=["admin\u202e"])
        assert "admin" in info.value.value_prefix

    def test_redactor_applies_to_repr(self) -> None:
        """A context's repr shows redacted ids."""
        ilog.set_redactor(lambda value: "***")
        text = repr(UserContext.new("alice", tenant_id="acme"))
        assert "alice" not in text
        assert "acme" not in text
