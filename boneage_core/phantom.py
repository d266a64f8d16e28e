"""The embedded default: deterministic synthetic hand radiographs in the Kaggle RSNA layout.

Each image is a function of (seed, index) alone. Bone age drives the anatomy the way the
Greulich-Pyle atlas describes it: carpal ossification centres appear on schedule and grow, phalangeal
epiphyses appear, widen to cap the shaft, growth plates close, bones lengthen and mineralise, and the
hand grows. Girls mature earlier, so for one bone age a girl's hand shows a later stage than a boy's;
knowing sex helps. The age-carrying anatomy is drawn larger than life, so that it is visible at the
48 px a CPU can search (see PHANTOM_VERSION). Nuisances vary per image: pose, field of view, exposure,
noise, a side marker, inverted polarity and file format (8-bit, 16-bit, RGB). Labels carry Gaussian
rater noise of LABEL_NOISE_SD_MONTHS, so no model can beat an expected MAE of about 0.8 x SD on them."""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from boneage_core.files import written_into_place

LABEL_NOISE_SD_MONTHS = 6.0
NOISE_FLOOR_MAE_MONTHS = LABEL_NOISE_SD_MONTHS * math.sqrt(2.0 / math.pi)  # E|N(0, sd)| = 0.798 sd
CANVAS_HW = (320, 256)  # portrait, like the RSNA scans
TRAIN_CSV = "boneage-training-dataset.csv"
TRAIN_DIR = "boneage-training-dataset"

# Ossification onset of the eight carpal bones in a boy's bone-age months (capitate first, pisiform last),
# and their centres in hand coordinates (x right, y down; the wrist sits near y = 0.72).
CARPAL_ONSET_MONTHS = (3.0, 5.0, 30.0, 40.0, 54.0, 62.0, 70.0, 120.0)
CARPAL_CENTRES = (
    (0.50, 0.69),
    (0.59, 0.68),
    (0.64, 0.74),
    (0.55, 0.76),
    (0.38, 0.70),
    (0.43, 0.67),
    (0.44, 0.75),
    (0.68, 0.71),
)
# Finger rays: base x on the carpus, angle from vertical (radians), bone lengths (metacarpal, proximal,
# middle, distal) as fractions of the hand's length. The thumb (first ray) has no middle phalanx.
RAYS = (
    (0.36, 0.85, (0.13, 0.10, 0.00, 0.07)),
    (0.42, 0.18, (0.21, 0.13, 0.08, 0.06)),
    (0.50, 0.00, (0.21, 0.14, 0.09, 0.06)),
    (0.57, -0.14, (0.20, 0.13, 0.085, 0.06)),
    (0.63, -0.30, (0.18, 0.10, 0.065, 0.055)),
)


def maturity_stage(age_months: float, male: bool) -> float:
    """Skeletal stage on the boys' month scale: girls' features show about 10% earlier."""
    return age_months * (1.0 if male else 1.1)


def sample_subject(rng: np.random.Generator) -> tuple[float, bool]:
    """True bone age (months) and sex, distributed like the RSNA training set (mean ~127, SD ~41)."""
    male = bool(rng.random() < 0.54)
    age = float(np.clip(rng.normal(127.0, 41.0), 3.0, 228.0))
    return age, male


# Version 3 draws the anatomy that separates nearby ages larger than life, so that it spans pixels at
# the embedded default's 48 px; the field of view, the pose, the hand's growth in the frame and the
# maturation schedule are version 1's. In version 1 carpal centres, epiphyses and growth plates were a
# pixel or less wide at 48 to 128 px, and a strong recipe stayed 1.5 to 1.8 times above the noise floor
# (results/learnability). Version 2 also cropped to the hand (an infant's hand filled the frame as an
# adolescent's did): that took away the hand's size, a cue the baseline leaned on (its val MAE, one
# seed each, went from 9.6 to 12.4 months with 2000 hands), so it was dropped.
PHANTOM_VERSION = 3
AGE_FEATURE_SCALE = 2.5  # carpal centres, epiphyses and growth plates, this much larger than life-size
SHAFT_SCALE = 1.4  # bone shafts thicker, so a growth plate across one spans pixels at 48 px
CARPAL_SPREAD = 1.2  # the carpus spread about its centre, making room for the larger centres
CARPUS_CENTRE = (0.52, 0.71)


class _Canvas:
    """Pixel grid mapped into hand coordinates by one similarity transform (the pose)."""

    def __init__(self, rng: np.random.Generator, hand_scale: float):
        h, w = CANVAS_HW
        angle = rng.normal(0.0, 0.12)
        zoom = hand_scale * rng.uniform(0.96, 1.04)
        cx, cy = 0.5 + rng.normal(0, 0.03), 0.56 + rng.normal(0, 0.03)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        # pixel -> canvas units (height = 1), centred, then undo rotation and zoom
        px, py = (xs - w / 2) / h, (ys - h / 2) / h
        c, s = math.cos(angle), math.sin(angle)
        self.u = ((c * px + s * py) / zoom + cx).astype(np.float32)
        self.v = ((-s * px + c * py) / zoom + cy).astype(np.float32)
        self.px_per_unit = h * zoom

    def capsule(self, p0, p1, radius: float) -> np.ndarray:
        """Soft-edged occupancy (0..1) of a segment thickened by radius."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((self.u - x0) * dx + (self.v - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        d = np.hypot(self.u - (x0 + t * dx), self.v - (y0 + t * dy))
        return np.clip((radius - d) * self.px_per_unit + 0.5, 0.0, 1.0)

    def ellipse(self, centre, rx: float, ry: float) -> np.ndarray:
        d = np.hypot((self.u - centre[0]) / rx, (self.v - centre[1]) / ry)
        edge = 1.0 / (self.px_per_unit * min(rx, ry))
        return np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)


def _forearm(canvas: _Canvas, stage: float) -> np.ndarray:
    """Radius and ulna; their distal epiphyses appear around 12 and 80 months, fuse by about 210."""
    f, bone = AGE_FEATURE_SCALE, np.zeros(canvas.u.shape, np.float32)
    for x, r, onset in ((0.43, 0.045, 12.0), (0.60, 0.034, 80.0)):
        gap = 0.012 * f * (1.0 - np.clip((stage - 170.0) / 40.0, 0, 1))
        bone = np.maximum(bone, canvas.capsule((x, 1.3), (x, 0.86 + 0.012 * f), r))
        grow = np.clip((stage - onset) / 60.0, 0, 1)
        if grow > 0:
            bone = np.maximum(bone, grow * canvas.ellipse((x, 0.86 - gap), r * (0.5 + 0.5 * grow), 0.009 * f))
    return bone


def _carpus(canvas: _Canvas, stage: float) -> np.ndarray:
    """Carpal ossification centres: absent before onset, then growing to full size over about 6 years."""
    bone = np.zeros(canvas.u.shape, np.float32)
    for (cx, cy), onset in zip(CARPAL_CENTRES, CARPAL_ONSET_MONTHS, strict=True):
        size = np.clip((stage - onset) / 72.0, 0, 1) ** 0.6
        if size > 0:
            r = (0.006 + 0.016 * size) * AGE_FEATURE_SCALE * 0.8
            x = CARPUS_CENTRE[0] + (cx - CARPUS_CENTRE[0]) * CARPAL_SPREAD
            y = CARPUS_CENTRE[1] + (cy - CARPUS_CENTRE[1]) * CARPAL_SPREAD
            bone = np.maximum(bone, canvas.ellipse((x, y), r * 1.1, r))
    return bone


def _rays(canvas: _Canvas, stage: float, growth: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue and bone of the five rays: metacarpal and phalanges, each with an epiphysis at its
    base that widens to cap the shaft, and a growth plate that closes in the late teens."""
    f = AGE_FEATURE_SCALE
    soft, bone = np.zeros(canvas.u.shape, np.float32), np.zeros(canvas.u.shape, np.float32)
    length = 0.72 + 0.18 * growth  # bones lengthen until the late teens
    for base_x, ang, bones in RAYS:
        x, y = base_x, 0.62
        dx, dy = -math.sin(ang), -math.cos(ang)
        tip = (x + dx * length * sum(bones), y + dy * length * sum(bones))
        soft = np.maximum(soft, canvas.capsule((x, y), tip, 0.05))
        for k, frac in enumerate(bones):
            if frac == 0:
                continue
            seg = frac * length
            shaft_r = SHAFT_SCALE * (0.017 if k == 0 else 0.015 - 0.002 * k)
            gap = 0.012 * f * (1.0 - np.clip((stage - 160.0) / 45.0, 0, 1))
            start = (x + dx * gap, y + dy * gap)
            end = (x + dx * seg, y + dy * seg)
            bone = np.maximum(bone, canvas.capsule(start, end, shaft_r))
            width = np.clip((stage - 15.0 - 4.0 * k) / 110.0, 0, 1)  # epiphysis: dot -> full-width cap
            if width > 0:
                ep = (x + dx * gap * 0.2, y + dy * gap * 0.2)
                bone = np.maximum(bone, width * canvas.ellipse(ep, shaft_r * (0.4 + 0.9 * width), 0.005 * f))
            x, y = end
    return soft, bone


def render_hand(age_months: float, male: bool, rng: np.random.Generator) -> np.ndarray:
    """One radiograph as float32 in [0, 1] (bright bone on a dark background), before file nuisances."""
    stage = maturity_stage(age_months, male)
    growth = min(stage / 216.0, 1.0) ** 0.8  # the hand grows until the late teens
    canvas = _Canvas(rng, hand_scale=0.55 + 0.5 * growth * (1.04 if male else 1.0))  # the hand grows
    density = 0.25 + 0.50 * min(stage / 216.0, 1.0)  # mineralisation: bone brightens with age
    # forearm and palm soft tissue
    soft = np.maximum(canvas.capsule((0.50, 1.3), (0.50, 0.72), 0.19), canvas.ellipse((0.50, 0.56), 0.19, 0.17))
    finger_soft, finger_bone = _rays(canvas, stage, growth)
    soft = np.maximum(soft, finger_soft)
    bone = np.maximum(np.maximum(_forearm(canvas, stage), _carpus(canvas, stage)), finger_bone)
    image = 0.06 + 0.20 * soft + density * bone * (0.7 + 0.3 * soft)
    return image.astype(np.float32)


def generate_image(seed: int, index: int, label_noise_sd: float = LABEL_NOISE_SD_MONTHS):
    """(image float32 [0,1], rated age in months, male, true age) for one (seed, index), deterministically."""
    rng = np.random.default_rng([seed, index])
    true_age, male = sample_subject(rng)
    image = render_hand(true_age, male, rng)
    # exposure and sensor: gain, gamma, blur-free quantum noise, a bright side marker in a corner
    image = np.clip(image * rng.uniform(0.9, 1.1), 0, 1) ** rng.uniform(0.9, 1.1)
    image += rng.normal(0, rng.uniform(0.01, 0.04), image.shape).astype(np.float32)
    h, w = image.shape
    my, mx = int(rng.integers(8, h // 6)), int(rng.choice([rng.integers(8, w // 6), rng.integers(w - w // 6, w - 24)]))
    image[my : my + 14, mx : mx + 10] = 0.95
    rated = float(np.clip(true_age + rng.normal(0.0, label_noise_sd), 1.0, 240.0))
    return np.clip(image, 0, 1), round(rated, 1), male, true_age


def encode_file(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The image in one of the formats the RSNA files come in, with some polarity-inverted scans."""
    if rng.random() < 0.08:
        image = 1.0 - image
    kind = rng.random()
    if kind < 0.15:  # 16-bit, using only part of the range the way many DICOM exports do
        top = rng.uniform(4000, 65535)
        return Image.fromarray((image * top).astype(np.uint16))
    gray = (image * 255 + 0.5).astype(np.uint8)
    if kind < 0.25:
        return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    return Image.fromarray(gray, mode="L")


def _write_one(args: tuple[Path, int, int]) -> dict:
    img_dir, seed, index = args
    image, rated, male, _ = generate_image(seed, index)
    case_id = 1000 + index
    encode_file(image, np.random.default_rng([seed, index, 1])).save(img_dir / f"{case_id}.png")
    return {"id": case_id, "boneage": rated, "male": male}


def write_phantom(out_dir: str | Path, n: int, seed: int = 0, workers: int | None = None, quiet: bool = True) -> Path:
    """Write n phantom radiographs and their labels in the Kaggle layout; returns the directory."""
    out = Path(out_dir)
    img_dir = out / TRAIN_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(img_dir, seed, index) for index in range(n)]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=n, desc="writing the phantom", unit="img", disable=quiet, dynamic_ncols=True)
    with bar, contextlib.ExitStack() as stack:
        if workers > 1 and n > 16:
            done = stack.enter_context(ProcessPoolExecutor(workers)).map(_write_one, jobs, chunksize=8)
        else:
            done = map(_write_one, jobs)
        rows = []
        for row in done:
            rows.append(row)
            bar.update(1)
    # the CSV is written last and atomically, so a directory holding it is a complete phantom
    with written_into_place(out / TRAIN_CSV) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return out
