"""Subprocess entry points and helpers for the tests (not test modules themselves)."""
