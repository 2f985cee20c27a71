"""The one exception users see.

Every problem caused by input (a bad folder, a wrong flag value, a file that does not fit) raises
``PolypsegError`` with a message that says what was wrong and what to do. The CLI prints the message
as one paragraph and exits with status 2, without a traceback; the Python API lets it propagate.
"""


class PolypsegError(Exception):
    """A problem with the user's input or environment, explained in the message."""


def one_line(text) -> str:
    """A message on one line (an exception's text may hold newlines)."""
    return " ".join(str(text).split())
