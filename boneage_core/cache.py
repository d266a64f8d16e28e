"""Decode every image once into a uint8 array (N, S, S) on disk, memory-mapped by every trial after.

Only deterministic work is cached (decode, polarity, scale to 8 bits, pad to square, resize); all
randomness happens later in boneage_core.augment. The file name carries a fingerprint of the image
files and the size, so a changed or added image, or another size, builds a new cache. Writes go to a
temporary file renamed into place, so a killed build never leaves a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from boneage_core.errors import BoneAgeError

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # bump when decode_image changes what it produces
MIN_SOURCE_PX = 16


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


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One image file -> uint8 (size, size): gray, bright bone, aspect kept by padding with background."""
    try:
        with Image.open(path) as img:
            img.load()
            if min(img.size) < MIN_SOURCE_PX:
                raise BoneAgeError(f"{path}: image is {img.size[0]}x{img.size[1]} px, too small to be a radiograph")
            a = to_gray_float(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BoneAgeError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    a = fix_polarity(a)
    h, w = a.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)  # pad with the (dark) background, centred
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = a
    small = Image.fromarray(square, mode="F").resize(
        (size, size), Image.Resampling.BOX if side >= 2 * size else Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(small) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def table_fingerprint(table: pd.DataFrame) -> str:
    """Hash of ids and image files (size, mtime): a changed or added image changes it."""
    h = hashlib.sha256()
    for case_id, path in zip(table["id"], table["path"], strict=True):
        st = os.stat(path)
        h.update(f"{case_id}|{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_path(table: pd.DataFrame, size: int, cache_dir: Path) -> Path:
    return cache_dir / f"images-v{CACHE_VERSION}-{table_fingerprint(table)}-{size}px.npy"


def build_cache(
    table: pd.DataFrame, size: int, cache_dir: str | Path | None = None, workers: int | None = None, quiet: bool = False
) -> np.ndarray:
    """uint8 (len(table), size, size) memory-mapped, row i = table row i; decoded only on a cache miss."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_path(table, size, cache_dir)
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (len(table), size, size) and arr.dtype == np.uint8:
            return arr
        log.warning("%s has the wrong shape; rebuilding it", path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(table), size, size))
    except OSError as exc:
        raise BoneAgeError(
            f"cache directory {cache_dir} is not writable ({exc.strerror}); set BONEAGE_CACHE_DIR"
        ) from None
    # PIL releases the GIL while decoding, so threads decode in parallel without pickling arrays
    workers = workers or min(8, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            done = pool.map(lambda p: decode_image(p, size), table["path"])
            for i, img in enumerate(
                tqdm(done, total=len(table), desc=f"decoding {size}px cache", disable=quiet, unit="img")
            ):
                out[i] = img
        out.flush()
        del out
        os.replace(tmp, path)  # atomic: a cache file under its final name is always complete
    finally:
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")
