"""Errors with a meaning for the run: what the user must fix, what a row could not do, what a generator broke."""


class UserError(Exception):
    """A problem with the user's input (spec, data folder, arguments) that they can fix.

    The message must name the file, field or path and say what to do. The CLI prints it as one sentence and
    exits with code 2, never with a traceback.
    """

    exit_code = 2


class Ineligible(Exception):
    """A stage had nothing to work on (e.g. every sample is memorised, so a strategy has no training set).

    Like a UserError raised inside a stage, it is a deterministic outcome: cached and replayed on warm runs, and
    shown as its row's (or strategy's) error while the rest of the run completes.
    """


class GeneratorOutputError(Exception):
    """A generator returned something unusable; the row gets an `error` entry, the run goes on."""
