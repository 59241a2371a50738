"""Error type raised by the data pipeline for bad input.

``DataError`` subclasses ``ValueError`` so callers that only know about
``ValueError`` still catch it. Every message is meant to be actionable on its
own: it names the task, the file (and line) or the setting that is wrong.
"""


class DataError(ValueError):
    """Bad or missing input data (file, row, label, split, task name)."""


__all__ = ["DataError"]
