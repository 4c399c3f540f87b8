"""One exception type for mistakes a user can fix; the CLI prints it without a traceback."""


class TinyStoriesError(Exception):
    """An error caused by the user's input (a file, a field, a flag), with a message saying how to fix it."""
