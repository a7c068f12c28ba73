"""Fixtures shared by the tests, owned by the tests (not by the report)."""
