"""One exception type for mistakes a user can fix; the CLI prints it without a traceback.

Also the one wording of OSErrors a user fixes on their own machine (`disk_error`).
"""

from __future__ import annotations

import errno


class TinyStoriesError(Exception):
    """An error caused by the user's input (a file, a field, a flag), with a message saying how to fix it."""


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
