"""Exceptions that the CLI turns into one-line messages and a non-zero exit."""

from __future__ import annotations


class FairstampError(Exception):
    """Base class for errors caused by user input (models, files, options)."""


class UnsupportedArchitectureError(FairstampError):
    """The model's architecture has no entry in the ArchSpec table."""


class ModelNotFoundError(FairstampError):
    """An alias, path or hub id that cannot be resolved to a model."""


class DataError(FairstampError):
    """A malformed input file; the message starts with `file:line:` where a line is at fault."""
