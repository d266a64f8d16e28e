"""Result files: written under a temporary name and renamed, so no reader ever sees half a file (and a
set of files staged whole before any replaces its old copy), and JSON kept strict (a metric of an empty
group, NaN, is written as null)."""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

from boneage_core.files import private_tmp, written_into_place


def write_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode(errors="backslashreplace"))  # a non-UTF-8 path byte as \udcff: valid UTF-8


def png_turned_off() -> str | None:
    """Why PNG copies of figures are not to be drawn, or None. BONEAGE_PNG=0 turns them off: kaleido
    starts a Chromium for every figure (seconds each), which a test suite or a quick look can skip;
    the HTML pages hold the same figures."""
    if os.environ.get("BONEAGE_PNG", "1").strip() == "0":
        return "turned off (BONEAGE_PNG=0)"
    return None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    try:
        with written_into_place(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:  # a failed write() names no file: this one is named, for the one-line error
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def finite(x: Any) -> Any:
    """x with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(finite(data), indent=2, default=str) + "\n")


def replace_files(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Every file of a set written aside first, then each renamed over its old copy: an error or an
    interruption while writing (a full disk, Ctrl-C) leaves every old file as it was. The paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            staged.append((private_tmp(out_dir / name), out_dir / name))
            staged[-1][0].write_bytes(data)
        for tmp, path in staged:  # the swap, once every new file is whole
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def set_aside(out_dir: Path, stale: list[Path]) -> Path | None:
    """Files of an earlier result that the new one does not replace, moved (not deleted) into
    out_dir/superseded-<UTC time>/; that folder, or None when there were none."""
    if not stale:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    aside = out_dir / f"superseded-{stamp}"
    aside.mkdir(exist_ok=True)
    for path in stale:
        os.replace(path, aside / path.name)
    return aside
