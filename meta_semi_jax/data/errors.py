"""The error every data reader raises for a dataset that cannot be read or used as asked
(``main`` prints its one line and exits with status 2)."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset that cannot be read or used as asked; the message is one line."""
