"""Image files -> pixels: the screen every command makes of every labelled file, and the decode.

screen_image is the quick test (stat, header, size, end marker) that load_table runs on every labelled
image; load_pixels decodes a file in full (what `data check` does); decode_image turns a file into
the uint8 square the cache stores. A file that cannot be used is an UnusableImage whose message is
the reason in a few words ('empty file', 'not a readable image (truncated)').
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SOURCE_PX = 16
MAX_SOURCE_PIXELS = 50_000_000  # the largest RSNA scans are about 15 MP


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


def _square_uint8(a: np.ndarray, size: int) -> np.ndarray:
    """Float pixels -> uint8 (size, size): polarity fixed, padded to square with the (dark) background."""
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
    """One image file -> uint8 (size, size): gray, bright bone, aspect kept by padding with background.
    What the cache stores for every row (boneage_core.cache); an unusable file is an UnusableImage."""
    return _square_uint8(load_pixels(path), size)
