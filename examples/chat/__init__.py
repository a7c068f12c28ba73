"""A small chat service that uses every part of :mod:`isolation`; see ``README.md`` beside it."""
