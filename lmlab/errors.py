"""The one exception type for mistakes a user can fix."""


class LmlabError(Exception):
    """A problem the user caused and can fix (a missing file, a bad option, a corpus too small).

    The message says what to do. The CLI prints it on one line and exits with status 2; any
    other exception escaping a verb is a bug in lmlab.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (as Ctrl-C raises KeyboardInterrupt) so that what it was writing is
    cleaned up or saved the same way; the CLI exits with 143 after it (130 after Ctrl-C)."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
