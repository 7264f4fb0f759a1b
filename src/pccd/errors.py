"""The project's own error type for bad input.

Why a type of its own: the CLI turns exactly these into one ``error: ...`` line and exit code
2, and lets every other exception keep its traceback, so a bug in the library never looks like
a user's mistake. It subclasses ``ValueError`` so library callers that already catch
``ValueError`` for bad arguments keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """A request, option, file or data set the user gave cannot be used; the message names
    the item and the reason."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or directory the user named is not there.

    Also a ``FileNotFoundError``, so callers that catch the missing file as an ``OSError``
    keep working.
    """


class IncompleteRun(Exception):
    """A batch job finished and recorded what it could, but some items got no result for a
    reason outside the input (e.g. a Dask task lost with its worker for good).

    Not a bug, so the CLI reports it as one ``error: ...`` line and exit code 2; the message
    says what is missing and that rerunning the same command finishes just those items.
    """
