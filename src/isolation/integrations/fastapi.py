"""FastAPI dependencies that hand an endpoint the current context or a registry product.

Use them with :class:`~isolation.integrations.starlette.IsolationMiddleware`
installed: the middleware enters the scope, and these only read it. Never
enter a scope in a dependency with ``yield``: FastAPI runs sync dependencies
in thread-pool copies of the context, and an anyio cancel scope exited in
another task raises.

Example::

    from isolation.integrations.fastapi import CurrentContext, provided

    @app.get("/me")
    async def me(ctx: CurrentContext, assistant: provided(Assistant)) -> dict[str, str]:
        return {"user": ctx.user_id}
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends

from isolation.context._model import UserContext
from isolation.context._scope import current_context, current_scope

__all__ = ["CurrentContext", "provided"]

T = TypeVar("T")


async def _current_context() -> UserContext:
    return current_context()


CurrentContext = Annotated[UserContext, Depends(_current_context)]
"""The bound :class:`~isolation.UserContext`, as an endpoint parameter."""


def provided(kind: type[T]) -> Any:
    """An ``Annotated`` parameter type that resolves ``kind`` from the request's registry."""

    async def resolve() -> Any:
        return await current_scope().aget(kind)

    resolve.__name__ = f"provided_{getattr(kind, '__name__', 'product')}"
    return Annotated[kind, Depends(resolve)]
