"""Cancellation: every stage polls `is_canceled()` and raises Canceled; the workspace stays resumable."""


class Canceled(Exception):
    """The user cancelled the run; completed stage products are kept for a resume."""


def check(is_canceled):
    if is_canceled is not None and is_canceled():
        raise Canceled("cancelled by the user")
