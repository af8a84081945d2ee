"""User-facing errors.

Every error a user can cause is a :class:`TransferkitError` whose message says what is wrong
*and* how to fix it. The CLI prints the message without a traceback and exits with code 2;
anything else escaping is a bug in transferkit.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """A problem the user can fix; the message names the file/row/field and the fix."""


class DataError(TransferkitError):
    """Unreadable, malformed or invalid input data."""


class BackboneNotFoundError(TransferkitError):
    """A backbone name that resolves nowhere; the message lists every place tried."""


class ArtifactError(TransferkitError):
    """A run/artifact directory that is missing, corrupt, foreign or would be overwritten."""


class ConfigError(TransferkitError):
    """An invalid option or configuration file."""
