"""Errors a user can act on.

Every front end turns a `BrushworkError` into a one-line message (CLI: exit code 2; API: a 4xx), so
raise it, with the fix in the message, wherever bad input or a bad file is found.
"""

EXIT_USAGE = 2  # the command line's exit status for a BrushworkError (or a refused recipe)
EXIT_INTERRUPTED = 130  # ... and for Ctrl-C (128 + SIGINT), what was finished before it kept


class BrushworkError(Exception):
    """A problem with the user's input or files, worded for the user."""


class ModelLoadError(BrushworkError):
    """A model file is missing, corrupt, unsafe to open or of an unknown architecture."""


class RecipeError(BrushworkError):
    """A recipe field has a value the engine cannot honour."""


class Cancelled(Exception):
    """Generation was stopped between two steps at the user's request."""
