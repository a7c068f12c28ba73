"""FastAPI dependencies that hand an endpoint the current context or a registry product.

Use them with :class:`~isolation.integrations.starlette.IsolationMiddleware`
installed: the middleware enters the scope, and these only read it. Never
enter a scope in a dependency with ``yield``: FastAPI runs sync dependencies
in thread-pool copies of the context, and an anyio cancel scope exited in
another task raises.

Example::

    from typing import Annotated
    from fastapi import Depends
    from isolation.integrations.fastapi import CurrentContext, from_scope

    AssistantOfRequest = Annotated[Assistant, Depends(from_scope(Assistant))]

    @app.get("/me")
    async def me(ctx: CurrentContext, assistant: AssistantOfRequest) -> dict[str, str]:
        return {"user": ctx.user_id}

``provided(Assistant)``, the same ``Annotated`` type in one call, is deprecated
(issue 19): a type checker accepts no call in an annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends

from isolation._deprecated import moved as _moved
from isolation.context._model import UserContext
from isolation.context._scope import current_context, current_scope

__all__ = ["CurrentContext", "from_scope"]

T = TypeVar("T")


async def _current_context() -> UserContext:
    return current_context()


CurrentContext = Annotated[UserContext, Depends(_current_context)]
"""The bound :class:`~isolation.UserContext`, as an endpoint parameter."""


def from_scope(kind: type[T]) -> Callable[[], Coroutine[Any, Any, T]]:
    """A dependency for ``Depends()`` that resolves ``kind`` from the current scope's registry.

    The product is the scope's (built once per request for ``REQUEST``
    products, checked for shared state); the dependency enters no scope.
    """

    async def resolve() -> T:
        return await current_scope().aget(kind)

    resolve.__name__ = f"from_scope_{getattr(kind, '__name__', 'product')}"
    return resolve


def _provided(kind: type[T]) -> Any:
    """An ``Annotated`` parameter type that resolves ``kind`` from the request's registry.

    ``Annotated[kind, Depends(from_scope(kind))]``, in one call.
    """
    return Annotated[kind, Depends(from_scope(kind))]


# provided() left the surface (issue 19): it warns for one release.
__getattr__ = _moved(__name__, {"provided": ("isolation.integrations.fastapi", "_provided")})
