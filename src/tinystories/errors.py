"""One exception type for mistakes a user can fix; the CLI prints it without a traceback.

Also the one wording of OSErrors a user fixes on their own machine (`disk_error`).
"""

from __future__ import annotations

import errno


class TinyStoriesError(Exception):
    """An error caused by the user's input (a file, a field, a flag), with a message saying how to fix it."""


class FieldError(TinyStoriesError):
    """A bad value in one named field: `field` names it as the message does (``sampling.top_p``,
    ``prompt``, ``adds``), and `code` says what is wrong in a word a program can act on
    (``invalid_value``, ``context_length_exceeded``). The server answers from these two, never
    from the message's wording."""

    def __init__(self, message: str, field: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.field, self.code = field, code


class PromptError(FieldError):
    """A prompt the model cannot read: empty, longer than its context, or a token id outside its
    vocabulary (`Engine.submit` checks every prompt)."""

    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message, "prompt", code)


class SteeringError(FieldError):
    """Vectors to add at hook points (steering) that the model cannot take: an unknown or
    unaddable hook point, the wrong width, NaN (`Engine.submit` checks every row's)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "adds")


# What a user can do about an OSError on a file, by errno; anything else is a bug and keeps its traceback.
_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space and run the same command again",
    errno.EDQUOT: "disk quota exceeded: free some space and run the same command again",
    errno.EACCES: "permission denied: give yourself access (or choose another output folder) and run again",
    errno.EPERM: "operation not permitted: make it writable (or choose another output folder) and run again",
    errno.EROFS: "read-only file system: choose another output folder (or remount it writable) and run again",
}


def disk_error(exc: OSError) -> str | None:
    """One line for an OSError a user fixes on their machine (a full disk, a read-only or
    someone else's folder), naming the file; None for any other OSError.

    Every command writes crash-safely (whole files by rename, append-only lines) and resumes,
    so the line can promise that nothing written before is lost.
    """
    advice = _ADVICE.get(exc.errno or 0)
    if advice is None:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {advice}; what was written before is kept and the run resumes from there"
