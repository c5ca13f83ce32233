"""Exceptions shared across vitkit."""


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints it without a traceback."""
