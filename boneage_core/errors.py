"""The exceptions the library raises on purpose: user mistakes, a disk that failed, diverged training."""

from __future__ import annotations

import errno


class BoneAgeError(Exception):
    """A user mistake (bad file, bad column, impossible parameter). The CLI prints it as one line, exit 2."""


class DiskFailed(Exception):
    """A disk that is full or failing under a file being written: no mistake of the user's input, so
    the CLI prints it as one line and exits 1 (a failure along the way), as for a full study storage."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is stopped and recorded as failed, never as a score."""


DISK_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def cannot_write(what: str, exc: OSError, advice: str = "", verb: str = "write") -> BoneAgeError | DiskFailed:
    """One line for an OSError while writing (or creating) `what`: the reason and the file it names
    (if any), then the advice. A full or failing disk is DiskFailed (exit 1); any other (permissions,
    a file where a folder should be) is the user's to fix, a BoneAgeError (exit 2). Raise it `from None`."""
    where = f": {exc.filename}" if exc.filename and str(exc.filename) not in what else ""
    text = f"cannot {verb} {what} ({exc.strerror or exc}{where})" + (f"; {advice}" if advice else "")
    return DiskFailed(text) if exc.errno in DISK_FAILURES else BoneAgeError(text)
