"""Temporary names for files and directories that several processes, or machines sharing a disk, may
write at once: each writer gets its own, renamed into place when complete."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def private_tmp(path: Path) -> Path:
    """A hidden sibling of path that no other writer (here or on another machine) uses; it names this
    machine and process, so a later writer knows when it was left by a writer that died."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{os.getpid()}@{socket.gethostname()}.tmp")


def remove_abandoned_tmp(path: Path) -> None:
    """path's temporaries (files or directories) left by writers on this machine whose process is gone,
    as a kill -9 leaves them. Another machine's, or a live process's, are left alone."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        owner = tmp.name[len(prefix) : -len(".tmp")].split(".", 1)[-1]
        pid, _, host = owner.partition("@")
        if host != socket.gethostname() or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        except OSError:
            continue  # another user's process: alive


@contextlib.contextmanager
def written_into_place(path: Path) -> Iterator[Path]:
    """A private temporary path to write path's new content to: renamed to path when the block ends
    without an error, removed in any case, so no reader ever sees half a file."""
    tmp = private_tmp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
