"""Provenance: the commands that wrote to a study, with which code and versions, on which device and data,
so its numbers can be trusted and rerun."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import shlex
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

from search.storage.study import redact_argv

COMMAND_PREFIX = "command "  # then the UTC time, the subcommand and 4 hex digits


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "boneage_search": version("boneage-search"),
        "git_commit": git_commit(Path(__file__).resolve().parents[2]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def git_commit(repo: Path) -> str | None:
    """The checkout's commit, with ' (local changes)' when tracked files differ from it; None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" (local changes)" if dirty else "")


def command_line(argv: list[str]) -> str:
    """The command as a user would type it again, passwords hidden; a word holding bytes that are no
    UTF-8 (a path, held with surrogates) in bash's $'...' quoting, so it can still be pasted."""
    return " ".join(_shell_word(w) for w in ["python", "-m", "search", *redact_argv(argv)])


def _shell_word(word: str) -> str:
    if not any("\udc80" <= c <= "\udcff" for c in word):
        return shlex.quote(word)
    raw = os.fsencode(word)
    return "$'" + "".join(chr(b) if 32 <= b < 127 and chr(b) not in "'\\" else f"\\x{b:02x}" for b in raw) + "'"


def provenance(argv: list[str], device: str, fingerprint: str | None, **extra: Any) -> dict[str, Any]:
    """One command's record: what was typed, with which code and versions, on which device and data."""
    return {
        "command": command_line(argv),
        "argv": redact_argv(argv),
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **_versions(),
        "device": device,
        "data_fingerprint": fingerprint,
        **extra,
    }


def record_command(study: optuna.Study, entry: dict[str, Any]) -> None:
    """Add a command's provenance to the study (read back by status and the report). Each command is
    its own attr, so commands on several machines at once never overwrite each other's record; its key
    reads in the dashboard as what ran when: 'command 2026-12-03 19:28:33.414 UTC retrain 8d1e'."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    verb = entry["argv"][0] if entry.get("argv") else "command"
    study.set_user_attr(f"{COMMAND_PREFIX}{now} UTC {verb} {uuid.uuid4().hex[:4]}", entry)


def recorded_commands(study: optuna.Study) -> list[dict[str, Any]]:
    """Every recorded command, oldest first (keys of an earlier version, 'command:<ns>:<id>', too)."""
    attrs = study.user_attrs
    keys = [k for k in attrs if k.startswith((COMMAND_PREFIX, "command:"))]
    return [attrs[k] for k in sorted(keys, key=lambda k: (str(attrs[k].get("started_utc", "")), k))]


def device_description(name: str) -> str:
    """'cpu (2 threads)' or 'cuda:0 (NVIDIA H200)': where a command ran."""
    import torch

    from boneage_core.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"
