"""Errors a user can act on: each message says what is wrong, where, and how to fix it."""


class DataError(ValueError):
    """Bad input data: a dataset, an RF table, arrays given to ingest."""
