"""Decode every image once into a uint8 array (N, S, S) on disk, memory-mapped by every trial after.

Only deterministic work is cached (decode, polarity, scale to 8 bits, pad to square, resize); all
randomness happens later in boneage_core.augment. The file name carries a fingerprint of the image
files and the size, so a changed or added image, or another size, builds a new cache. Writes go to a
temporary file renamed into place, so a killed build never leaves a cache that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from boneage_core.errors import BoneAgeError
from boneage_core.files import private_tmp, remove_abandoned_tmp, written_into_place

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # bump when decode_image changes what it produces
MIN_SOURCE_PX = 16
MAX_SOURCE_PIXELS = 50_000_000  # the largest RSNA scans are about 15 MP
DISK_MARGIN_BYTES = 64 * 2**20  # left free beside a new cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("BONEAGE_CACHE_DIR") or Path.home() / ".cache" / "boneage-search")


def to_gray_float(img: Image.Image) -> np.ndarray:
    """Any PNG mode -> float32 in [0, 1]. 16-bit data is scaled from its own range, because Pillow's
    convert("L") clips 16-bit values at 255 instead of scaling them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))  # transparent areas read as air
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def fix_polarity(a: np.ndarray) -> np.ndarray:
    """Radiographs show bone bright on dark air. The border is mostly air: if it is brighter than the
    image on average, the image was stored inverted (MONOCHROME1) and is flipped. (Comparing with the
    centre's median instead fails when the hand covers less than half the centre.)"""
    h, w = a.shape
    bh, bw = max(1, h // 10), max(1, w // 10)
    border = np.concatenate([a[:bh].ravel(), a[-bh:].ravel(), a[:, :bw].ravel(), a[:, -bw:].ravel()])
    return 1.0 - a if np.median(border) > a.mean() else a


class UnusableImage(Exception):
    """An image file that cannot be used, with the reason in a few words ('empty file', 'truncated')."""


def _check_size(img: Image.Image) -> None:
    w, h = img.size
    if min(w, h) < MIN_SOURCE_PX:
        raise UnusableImage(f"{w}x{h} px, too small to be a radiograph")
    if w * h > MAX_SOURCE_PIXELS:
        raise UnusableImage(f"{w}x{h} px, above the {MAX_SOURCE_PIXELS // 1_000_000} megapixels of any scan")


@contextlib.contextmanager
def _opened(path: str | Path):
    """Image.open with every way a file can be unusable as an UnusableImage: its size is checked from
    the header, before any pixel is decoded (a decompression bomb is refused, not decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img)
                yield img
    except UnusableImage:
        raise
    except Image.DecompressionBombError:
        raise UnusableImage("a decompression bomb (its header claims far more pixels than any scan)") from None
    except UnidentifiedImageError:
        raise UnusableImage("not an image file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        why = "truncated" if "truncated" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise UnusableImage(f"not a readable image ({why})") from None


def _file_problem(path: str | Path) -> str | None:
    """Why a path cannot be an image file without opening it: missing, a broken link, not a file, empty."""
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "missing"
    except OSError as exc:
        return "symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"  # a FIFO or a device would block or never end
    if st.st_size == 0:
        return "empty file"
    return None


def _ends_whole(path: str | Path) -> bool:
    """Whether a PNG or JPEG file ends with its end marker: the one-read test for a cut-off download."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read()
    head = Path(path).suffix.lower()
    if head == ".png":
        return b"IEND" in tail
    if head in (".jpg", ".jpeg"):
        return b"\xff\xd9" in tail
    return True


def screen_image(path: str | Path) -> str | None:
    """Why an image file is unusable, or None: the quick test every command makes of every image (stat,
    header, size, end marker; a file whose end marker is missing is decoded in full to decide)."""
    if (problem := _file_problem(path)) is not None:
        return problem
    try:
        with _opened(path) as img:
            if not _ends_whole(path):
                img.load()  # raises for a truncated file; a whole one with trailing bytes passes
    except UnusableImage as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def load_pixels(path: str | Path) -> np.ndarray:
    """The file's pixels as float32 [0, 1], or UnusableImage: what data check and the cache both read."""
    if (problem := _file_problem(path)) is not None:
        raise UnusableImage(problem)
    with _opened(path) as img:  # a failure inside (a truncated file's load) is an UnusableImage too
        img.load()
        return to_gray_float(img)


def _to_cache_image(a: np.ndarray, size: int) -> np.ndarray:
    a = fix_polarity(a)
    h, w = a.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)  # pad with the (dark) background, centred
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = a
    small = Image.fromarray(square, mode="F").resize(
        (size, size), Image.Resampling.BOX if side >= 2 * size else Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(small) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One image file -> uint8 (size, size): gray, bright bone, aspect kept by padding with background."""
    try:
        return _to_cache_image(load_pixels(path), size)
    except UnusableImage as exc:
        raise BoneAgeError(f"{path}: {exc}") from None


def table_fingerprint(table: pd.DataFrame) -> str:
    """Hash of ids and image files (size, mtime): a changed or added image changes it."""
    h = hashlib.sha256()
    for case_id, path in zip(table["id"], table["path"], strict=True):
        st = os.stat(path)
        h.update(f"{case_id}|{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_path(table: pd.DataFrame, size: int, cache_dir: Path) -> Path:
    return cache_dir / f"images-v{CACHE_VERSION}-{table_fingerprint(table)}-{size}px.npy"


def unreadable_list_path(cache: Path) -> Path:
    """Beside every cache: the rows that failed to decode (id, path, reason), so a hit knows them too."""
    return cache.with_name(cache.stem + ".unreadable.csv")


def _decode_row(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return _to_cache_image(load_pixels(path), size), None
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
        arr = np.load(path, mmap_mode="c")
        if arr.shape == (len(table), size, size) and arr.dtype == np.uint8:
            return arr, _read_unreadable(listed, table)
        log.warning("%s has the wrong shape; rebuilding it", path)
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
    except OSError as exc:
        raise BoneAgeError(
            f"cannot write the image cache in {cache_dir} ({exc.strerror or exc}); free some space, fix its "
            "permissions, or set BONEAGE_CACHE_DIR"
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
        bar = tqdm(done, total=len(table), desc=desc, disable=quiet, unit="img")
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
    where = {case: i for i, case in enumerate(table["id"])}
    return {where[c]: r for c, r in zip(frame["id"], frame["reason"], strict=True) if c in where}
