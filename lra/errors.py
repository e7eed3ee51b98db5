"""The one exception type that means "the user's input is wrong", not "the code is wrong"."""


class LRAError(Exception):
    """Bad input: a malformed file, an unknown name, an impossible size.

    The command-line entry points print the message as one line (it should name the file and
    line, or the config key) and exit non-zero without a traceback and without leaving records.
    """


def one_line(message: str, limit: int = 300) -> str:
    """`message` on one line (whitespace collapsed), at most `limit` characters: a record's error."""
    return " ".join(message.split())[:limit]
