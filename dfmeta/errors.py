"""User-facing errors: one clear line, no traceback."""


class DfmetaError(Exception):
    """A mistake in the user's input (a path, a field, a file): reported as one line by the CLI."""
