"""Errors a user can cause: reported as one sentence and exit code 2, never as a traceback."""


class UserError(Exception):
    """A problem with the user's input (spec, data folder, arguments) that they can fix.

    The message must name the file, field or path and say what to do.
    """

    exit_code = 2


class GeneratorOutputError(Exception):
    """A generator returned something unusable; the row gets an `error` entry, the run goes on."""
