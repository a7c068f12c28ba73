"""Deprecated: :class:`MemoryBackend` is :class:`isolation.events.backends.MemoryBackend`."""

from isolation._deprecated import moved

__all__: list[str] = []

__getattr__ = moved(__name__, {"MemoryBackend": ("isolation.events.backends", "MemoryBackend")})
