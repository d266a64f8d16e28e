"""Decode every image once into a uint8 array (N, S, S) on disk, memory-mapped by every trial after.

Only deterministic work is cached (boneage_core.images.decode_image: decode, polarity, scale to 8
bits, pad to square, resize); all randomness happens later in boneage_core.augment. The file name
carries a fingerprint of the image files and the size, so a changed or added image, or another size,
builds a new cache. Writes go to a temporary file renamed into place, so a killed build never leaves
a cache that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from boneage_core.errors import BoneAgeError, cannot_write
from boneage_core.files import private_tmp, remove_abandoned_tmp, written_into_place
from boneage_core.images import UnusableImage, decode_image

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # bump when decode_image, which the build calls for every row, changes what it produces
DISK_MARGIN_BYTES = 64 * 2**20  # left free beside a new cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("BONEAGE_CACHE_DIR") or Path.home() / ".cache" / "boneage-search")


def table_fingerprint(table: pd.DataFrame) -> str:
    """Hash of ids and image files (size, mtime): a changed or added image changes it."""
    h = hashlib.sha256()
    for case_id, path in zip(table["id"], table["path"], strict=True):
        st = os.stat(path)
        h.update(f"{case_id}|{path}|{st.st_size}|{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def table_family(table: pd.DataFrame) -> str:
    """Hash of ids and image paths only: the same rows of the same files, whatever their content."""
    h = hashlib.sha256()
    for case_id, path in zip(table["id"], table["path"], strict=True):
        h.update(f"{case_id}|{path}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:12]


def cache_path(table: pd.DataFrame, size: int, cache_dir: Path) -> Path:
    """images-v<version>-<family>-<fingerprint>-<size>px.npy: the family names the rows, the fingerprint
    their files' state, so a cache a change of the files made stale is found and removed."""
    return cache_dir / f"images-v{CACHE_VERSION}-{table_family(table)}-{table_fingerprint(table)}-{size}px.npy"


def remove_superseded(path: Path) -> list[Path]:
    """The caches of the same rows and size built before the files changed (another fingerprint), with
    their unreadable-images lists: each change of an image's mtime would otherwise leave one more
    cache behind. A process still reading one keeps its memory map (Linux frees the blocks after)."""
    version, family, _, size = path.stem.split("-", 4)[1:]
    gone = []
    for old in path.parent.glob(f"images-{version}-{family}-*-{size}.npy"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
                unreadable_list_path(old).unlink(missing_ok=True)
                gone.append(old)
    return gone


def unreadable_list_path(cache: Path) -> Path:
    """Beside every cache: the rows that failed to decode (id, path, reason), so a hit knows them too."""
    return cache.with_name(cache.stem + ".unreadable.csv")


def _decode_row(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """One row's cache image, or None and why its file is unusable."""
    try:
        return decode_image(path, size), None
    except UnusableImage as exc:
        return None, str(exc)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def _reserve(tmp: Path, shape: tuple[int, int, int], cache_dir: Path) -> np.ndarray:
    """The temporary cache file with every block allocated up front: a disk too small is one error now,
    not a bus error when a write into the memory map finds no block (which kills the process silently)."""
    n_bytes = int(np.prod(shape))
    free = shutil.disk_usage(cache_dir).free
    if n_bytes + DISK_MARGIN_BYTES > free:
        raise BoneAgeError(
            f"the cache needs {_size(n_bytes)} in {cache_dir}, and {_size(DISK_MARGIN_BYTES)} to spare, but only "
            f"{_size(free)} are free; "
            "free some space or set BONEAGE_CACHE_DIR to a larger disk"
        )
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    with open(tmp, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
                raise
    return out


def build_cache(
    table: pd.DataFrame,
    size: int,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    quiet: bool = False,
    what: str = "images",
) -> tuple[np.ndarray, dict[int, str]]:
    """uint8 (len(table), size, size) memory-mapped copy-on-write (every process shares the pages; none
    copies them), row i = table row i, decoded only on a cache miss; and {row: reason} for the rows whose
    image could not be decoded (left black in the cache: the caller drops them)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_path(table, size, cache_dir)
    listed = unreadable_list_path(path)
    if path.is_file() and listed.is_file():
        reading = path
        try:  # a damaged file (cut short, overwritten, another format) is said and rebuilt, never used
            arr = np.load(path, mmap_mode="c")
            if arr.shape != (len(table), size, size) or arr.dtype != np.uint8:
                raise ValueError(f"shape {arr.shape} {arr.dtype}, not ({len(table)}, {size}, {size}) uint8")
            reading = listed
            return arr, _read_unreadable(listed, table)
        except Exception as exc:  # numpy and pandas raise many types for a damaged file
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            log.warning("the image cache file %s is damaged (%s); rebuilding the cache", reading, reason)
    shape = (len(table), size, size)
    tmp = private_tmp(path)  # this build's own: another process or machine may build the same cache
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned_tmp(path)  # of a build killed (even by kill -9) on this machine
        out = _reserve(tmp, shape, cache_dir)
        failed = _decode_into(out, table, size, workers, quiet, f"decoding {what} at {size} px")
        out.flush()
        del out
        _write_unreadable(listed, table, failed)  # before the cache: a cache under its name has its list
        os.replace(tmp, path)  # atomic: a cache file under its final name is always complete
        remove_superseded(path)
    except OSError as exc:
        raise cannot_write(
            f"the image cache in {cache_dir}", exc, "free some space, fix its permissions, or set BONEAGE_CACHE_DIR"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="c"), failed


def _decode_into(
    out: np.ndarray, table: pd.DataFrame, size: int, workers: int | None, quiet: bool, desc: str
) -> dict[int, str]:
    # PIL releases the GIL while decoding, so threads decode in parallel without pickling arrays
    workers = workers or min(32, os.cpu_count() or 1)
    failed: dict[int, str] = {}
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(lambda p: _decode_row(p, size), table["path"])
        with tqdm(done, total=len(table), desc=desc, disable=quiet, unit="img") as bar:  # closed before an error
            for i, (img, reason) in enumerate(bar):
                if img is None:
                    out[i] = 0
                    failed[i] = reason
                else:
                    out[i] = img
    return failed


def _write_unreadable(listed: Path, table: pd.DataFrame, failed: dict[int, str]) -> None:
    rows = sorted(failed)
    frame = pd.DataFrame(
        {
            "id": table["id"].iloc[rows].to_numpy(),
            "path": table["path"].iloc[rows].to_numpy(),
            "reason": [failed[i] for i in rows],
        }
    )
    with written_into_place(listed) as tmp:  # two processes building the same cache write the same list
        frame.to_csv(tmp, index=False)


def _read_unreadable(listed: Path, table: pd.DataFrame) -> dict[int, str]:
    frame = pd.read_csv(listed, dtype=str, keep_default_na=False)
    if list(frame.columns) != ["id", "path", "reason"]:
        raise ValueError(f"columns {list(frame.columns)}, not id, path, reason")
    where = {case: i for i, case in enumerate(table["id"])}
    return {where[c]: r for c, r in zip(frame["id"], frame["reason"], strict=True) if c in where}
