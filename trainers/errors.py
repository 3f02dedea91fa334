"""Errors every stage raises for problems the user can fix.

`ToolkitError` means bad input or usage: the CLI prints its message on one line
and exits with code 2. Anything else escaping a command is a bug (exit code 1).
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Bad input or usage: a missing file, a wrong shape, an unknown option."""


class DataError(ToolkitError):
    """The data given cannot be used (missing, malformed, NaN, one class...)."""


class ArtifactError(ToolkitError):
    """A model directory is missing, truncated, corrupted or inconsistent."""
