"""boneage_core.images: every mode decodes to the same picture (16-bit, RGB, RGBA, inverted, any aspect);
an unusable file is one reason in a few words."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from boneage_core.images import UnusableImage, decode_image, screen_image
from tests.conftest import hand_png


def _bright_bone_on_dark(size=(60, 40)) -> np.ndarray:
    a = np.full(size, 20, np.uint8)
    a[20:40, 15:25] = 230  # a "bone" in the centre
    return a


def test_16bit_image_is_scaled_from_its_range_not_clipped(tmp_path):
    a = _bright_bone_on_dark().astype(np.uint16) * 4  # values 80 .. 920: all above 255
    Image.fromarray(a).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode.startswith("I")
    out = decode_image(tmp_path / "x.png", 32)
    # Pillow's convert("L") would make every pixel 255; scaled, background is dark and bone bright
    assert out.max() >= 200 and np.median(out) < 30


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_every_mode_decodes_to_the_same_picture(tmp_path, mode):
    hand_png(tmp_path / "ref.png", 1, mode="L")
    hand_png(tmp_path / "x.png", 1, mode=mode)
    ref = decode_image(tmp_path / "ref.png", 32).astype(int)
    out = decode_image(tmp_path / "x.png", 32).astype(int)
    assert out.shape == (32, 32) and out.dtype == np.int64
    assert np.abs(out - ref).mean() < 8


def test_inverted_image_is_detected_and_flipped(tmp_path):
    a = _bright_bone_on_dark()
    Image.fromarray(a).save(tmp_path / "normal.png")
    Image.fromarray(255 - a).save(tmp_path / "inverted.png")
    normal = decode_image(tmp_path / "normal.png", 32).astype(int)
    fixed = decode_image(tmp_path / "inverted.png", 32).astype(int)
    assert np.abs(normal - fixed).max() <= 2


def test_aspect_ratio_is_kept_by_padding_with_background(tmp_path):
    a = np.full((80, 20), 10, np.uint8)  # tall and thin: a bright bone on dark air
    a[4:-4, 4:-4] = 200
    Image.fromarray(a).save(tmp_path / "tall.png")
    out = decode_image(tmp_path / "tall.png", 40)
    # 80x20 -> padded to 80x80 -> 40x40: the bone is 6 px wide in the middle, dark padding either side
    assert out[:, :14].max() < 30 and out[:, -14:].max() < 30
    assert out[20, 18:22].min() > 150


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty file"),
        (b"this is not a png", "not an image file"),
        ("truncated", "not a readable image"),
        ("tiny", "too small"),
    ],
)
def test_broken_images_are_unusable_for_one_clear_reason(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content == "truncated":
        hand_png(path, 1)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "tiny":
        Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(UnusableImage, match=message):
        decode_image(path, 32)
    assert message in screen_image(path)  # the quick screen every command makes says the same
