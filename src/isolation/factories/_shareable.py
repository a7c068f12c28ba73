"""``shareable(obj)``: declare an object, or a type, that every user may share.

The shared-state walk neither enters nor compares a declared object, nor
anything reachable only through it. Declare what is shared on purpose and
read-only in practice: a connection pool, a compiled model, a settings object.

A declared object that supports weak references is remembered weakly; any
other (a ``dict``, a ``list``) is kept alive for the life of the process, so
declare long-lived objects, not per-request ones.

Objects known to carry one user's state through ordinary use are refused,
whatever is declared, and wherever they sit inside the declared object: an
HTTP client's cookie jar keeps the upstream session of whoever logged in last
and sends it for everyone. The declared object's graph is searched once, at
declaration, with the walk's edges and bounds. The jars and clients are known
by their classes' package and name, so that no optional library is imported
here.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any, Final, TypeVar

from isolation._errors import ConfigurationError

__all__ = [
    "carries_user_state",
    "declared_shareable",
    "is_shareable_type",
    "refuse_per_user_state",
    "shareable",
]

T = TypeVar("T")

_lock = threading.Lock()
# id -> the object itself (not weak-referenceable) or a weak reference to it.
# Keeping the object (or a live weak reference) is what makes the id trustworthy.
_strong: dict[int, object] = {}
_weak: dict[int, weakref.ref[Any]] = {}
_types: set[type] = set()
# Bumped whenever _types changes, so per-walk caches of type decisions stay right.
_generation = [0]


# (top-level package, qualname) of a class or one of its bases -> (what it
# keeps per user, what to share instead). Subclasses are known through their
# bases; the package, not the module, so that a library moving its classes
# between private modules (httpx sets __module__ to "httpx") is still known.
_HTTPX_CLIENT: Final = (
    "an httpx client keeps cookies (and auth, headers) in the client",
    "share the connection pool, an httpx.AsyncHTTPTransport (or HTTPTransport) with "
    "its limits, and build a client per user over it: "
    "httpx.AsyncClient(transport=shared_transport)",
)
_HTTPX2_CLIENT: Final = (
    "an httpx2 client keeps cookies (and auth, headers) in the client",
    "share the connection pool, an httpx2.AsyncHTTPTransport (or HTTPTransport) with "
    "its limits, and build a client per user over it: "
    "httpx2.AsyncClient(transport=shared_transport)",
)
_COOKIE_JAR: Final = (
    "a cookie jar keeps the session cookies the upstream set for whoever used it last",
    "keep cookies per user: share the connection pool (an httpx transport, a requests "
    "HTTPAdapter, an aiohttp TCPConnector) and build a client, with its own cookies, "
    "per user over it",
)
_PER_USER_STATE: Final = {
    ("httpx", "Client"): _HTTPX_CLIENT,
    ("httpx", "AsyncClient"): _HTTPX_CLIENT,
    ("httpx", "BaseClient"): _HTTPX_CLIENT,
    ("httpx2", "BaseClient"): _HTTPX2_CLIENT,
    # The cookie jars themselves, held outside a client (requests' RequestsCookieJar
    # is a stdlib CookieJar; aiohttp's jars derive from its AbstractCookieJar).
    ("http", "CookieJar"): _COOKIE_JAR,
    ("httpx", "Cookies"): _COOKIE_JAR,
    ("httpx2", "Cookies"): _COOKIE_JAR,
    ("requests", "RequestsCookieJar"): _COOKIE_JAR,
    ("aiohttp", "AbstractCookieJar"): _COOKIE_JAR,
    ("requests", "Session"): (
        "a requests Session keeps cookies (and auth, headers) in the session",
        "share an HTTPAdapter (its pool) and mount it on a Session built per user",
    ),
    ("aiohttp", "ClientSession"): (
        "an aiohttp ClientSession keeps cookies in its cookie_jar",
        "share an aiohttp.TCPConnector (its pool) and build a ClientSession per user "
        "with connector=shared_connector, connector_owner=False",
    ),
}


def carries_user_state(cls: type) -> tuple[str, str] | None:
    """``(why, what to share instead)`` if ``cls`` keeps per-user state in ordinary use."""
    for klass in cls.__mro__:
        module = getattr(klass, "__module__", None)
        if not isinstance(module, str):
            continue
        package = module.partition(".")[0]
        known = _PER_USER_STATE.get((package, klass.__qualname__))
        if known is not None:
            return known
    return None


def refuse_per_user_state(cls: type, what: str) -> None:
    """Raise :class:`ConfigurationError` if ``cls`` keeps per-user state (see above).

    ``what`` completes "cannot be ...": how the object was to be shared.
    """
    known = carries_user_state(cls)
    if known is not None:
        why, instead = known
        raise ConfigurationError(
            f"{cls.__qualname__} cannot be {what}: {why}, so one user's upstream "
            "session would be sent with another user's requests",
            hint=f"Instead, {instead}",
        )


def _refuse_reachable_state(obj: object) -> None:
    """Raise :class:`ConfigurationError` if per-user state is reachable from ``obj``.

    Searched with the walk's edges (attributes, slots, class attributes, items,
    a bound method's ``__self__``, a partial's parts, defaults and closure
    cells) and bounds; a search stopped by a bound warns, as the walk does.
    """
    from isolation.factories._graph import WalkTruncatedWarning, find_reachable, render_path

    found, truncated = find_reachable(obj, carries_user_state)
    if found is not None:
        path, value, (why, instead) = found
        cls = type(value)
        subject, reaches = cls.__qualname__, ""
        if len(path) > 1:  # inside: say where
            package = cls.__module__.partition(".")[0]
            subject = type(obj).__qualname__
            reaches = f"it reaches {package}.{cls.__qualname__} at {render_path(path)}; "
        raise ConfigurationError(
            f"{subject} cannot be declared shareable: {reaches}{why}, so one user's "
            "upstream session would be sent with another user's requests",
            hint=f"Instead, {instead}",
        )
    if truncated is not None:
        warnings.warn(
            WalkTruncatedWarning(
                f"isolation.shareable() searched a {type(obj).__qualname__} for per-user "
                f"state (HTTP clients, cookie jars) up to {truncated}: what lies beyond "
                "was not searched"
            ),
            stacklevel=3,
        )


def _forget(ref: weakref.ref[Any], key: int) -> None:
    # Called when a declared object dies: only drop the entry if it is still ours.
    if _weak.get(key) is ref:
        _weak.pop(key, None)


def shareable(obj: T) -> T:
    """Declare ``obj`` shareable between users; return it unchanged.

    The shared-state walk skips ``obj`` and everything reachable only through
    it. Given a type, it skips every instance of that type and its subclasses.
    Works as a class decorator too.

    Example::

        # One connection pool for everyone; cookies stay in each user's client.
        pool = isolation.shareable(httpx.AsyncHTTPTransport(limits=httpx.Limits()))

    Raises:
        ConfigurationError: ``obj`` (or the type), or anything reachable from
            ``obj`` (attributes at any depth, slots, items, a bound method's
            instance, a partial's arguments, closure cells), is known to carry
            one user's state into another's requests: an httpx or httpx2
            ``Client``/``AsyncClient``, a requests ``Session``, an aiohttp
            ``ClientSession``, or a cookie jar itself (``http.cookiejar``,
            ``httpx.Cookies``, aiohttp's). The message says where, and what to
            share instead.

    Warns:
        WalkTruncatedWarning: the search for such state stopped at the walk's
            bounds (10 edges, 10,000 objects): what lies beyond was not searched.
    """
    if isinstance(obj, type):
        refuse_per_user_state(obj, "declared shareable")
    else:
        _refuse_reachable_state(obj)
    with _lock:
        if isinstance(obj, type):
            _types.add(obj)
            _generation[0] += 1
            return obj
        key = id(obj)

        def forget(ref: weakref.ref[Any]) -> None:
            _forget(ref, key)

        try:
            ref = weakref.ref(obj, forget)
        except TypeError:
            _strong[key] = obj
        else:
            _weak[key] = ref
    return obj


def declared_shareable(obj: object) -> bool:
    """Whether ``obj`` itself was declared with :func:`shareable` (its type is not consulted)."""
    key = id(obj)
    if key in _strong:
        return _strong.get(key) is obj
    ref = _weak.get(key)
    return ref is not None and ref() is obj


def is_shareable_type(cls: type) -> bool:
    """Whether ``cls`` or one of its bases was declared with :func:`shareable`."""
    if not _types:
        return False
    return any(base in _types for base in cls.__mro__)


def generation() -> int:
    """A number that changes whenever a type is declared shareable."""
    return _generation[0]
