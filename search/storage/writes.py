"""Result files: written under a temporary name and renamed, so no reader ever sees half a file, and
JSON kept strict (a metric of an empty group, NaN, is written as null)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from boneage_core.files import written_into_place


def write_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with written_into_place(path) as tmp:
        tmp.write_bytes(data)


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
