"""Deprecated: the ready machines are :class:`isolation.testing.RouterMachine`,
:class:`isolation.testing.RegistryMachine` and :data:`isolation.testing.DEFAULT_PRINCIPALS`."""

from isolation._deprecated import moved

__all__: list[str] = []

__getattr__ = moved(
    __name__,
    {
        name: ("isolation.testing", name)
        for name in ("DEFAULT_PRINCIPALS", "RegistryMachine", "RouterMachine")
    },
)
