"""Error classes. Each maps to a one-line CLI message and an exit code."""


class KisstoreError(Exception):
    """Base class of every error kisstore reports to a user."""

    exit_code = 1


class InputError(KisstoreError):
    """Bad user input: an items file, an option value, a model name (exit code 2)."""

    exit_code = 2


class StoreError(KisstoreError):
    """A store that cannot be read or written as asked (exit code 2)."""

    exit_code = 2


class NumericalError(KisstoreError):
    """A computation that cannot be done reliably, e.g. a singular covariance."""

    exit_code = 3
