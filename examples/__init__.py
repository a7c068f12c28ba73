"""Runnable examples of :mod:`isolation`; each is a package importable from the project root."""
