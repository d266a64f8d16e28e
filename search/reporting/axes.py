"""What every figure's axes share: readable parameter names, log ticks a reader can read (1, 2, 5 x 10^k,
written out), a colour scale whose both ends show on white, labels broken over lines instead of
overlapping, numbers that never read '-0.0'."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable

PARAM_LABELS = {
    "lr": "learning rate",
    "batch_size": "batch size",
    "aug_strength": "augmentation strength",
    "weight_decay": "weight decay",
    "image_size": "image size (px)",
    "dropout": "dropout",
    "epochs": "epochs",
    "loss": "loss",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "use_sex": "sex as input",
    "backbone": "backbone",
    "pretrained": "weights",
    "head_hidden": "head width",
    "aug_intensity": "intensity augmentation",
}
# Blues without its near-white end: the worst trial stays as visible on white as the best
SCALE = [[0.0, "#6baed6"], [0.4, "#3182bd"], [0.75, "#08519c"], [1.0, "#08306b"]]


def label(name: str) -> str:
    """A parameter's name in words ('use_sex' -> 'sex as input'); an unknown one with spaces."""
    return PARAM_LABELS.get(name, name.replace("_", " "))


def wrap(text: str, width: int = 14) -> str:
    """Text broken into lines of about `width` characters (plotly's <br>), so neighbours do not overlap."""
    return "<br>".join(textwrap.wrap(text, width)) or text


def signed(value: float, digits: int = 1) -> str:
    """'+1.2', '-0.4', '+0.0': a signed number that never reads '-0.0'."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def plain(value: float) -> str:
    """A tick value written out, at most 3 significant digits: 0.0001, 0.002, 50, 200, 1000."""
    if value == 0 or 1 <= abs(value) < 1e6 and value == round(value):
        return f"{value:.0f}"
    return f"{value:.3g}" if 1e-4 <= abs(value) < 1e6 else f"{value:.0e}".replace("e-0", "e-")


def log_ticks(values: Iterable[float], most: int = 8, inside: bool = False) -> tuple[list[float], list[str]]:
    """Tick values and their text for a log axis over values: 1, 2 and 5 x 10^k inside the data's range
    (and one step beyond each end, unless `inside`), thinned to 1 x 10^k when there would be more than
    `most` (or to every other one, where no power of ten is left). A range too narrow to hold two of
    them (12 to 16 months) gets round linear steps inside it instead: ticks outside the drawn range
    would leave the axis bare."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not finite:
        return [], []
    lo, hi = min(finite), max(finite)
    ticks = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0**k for m in (1, 2, 5)]
    if hi > lo and sum(lo <= t <= hi for t in ticks) < 2:
        steps = [t for t in linear_ticks(lo, hi, 5) if lo <= t <= hi]
        return steps, [plain(t) if t == round(t) else f"{t:g}" for t in steps]
    below = lo if inside else max([t for t in ticks if t <= lo], default=lo)
    above = hi if inside else min([t for t in ticks if t >= hi], default=hi)
    kept = [t for t in ticks if below * (1 - 1e-9) <= t <= above * (1 + 1e-9)]
    if len(kept) > most:
        kept = [t for t in kept if round(t / 10 ** math.floor(math.log10(t) + 1e-9)) == 1] or kept[::2]
    while len(kept) > most:
        kept = kept[::2]
    return kept, [plain(t) for t in kept]


def linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n evenly spaced ticks from lo to hi at round values (1, 2, 2.5 or 5 x 10^k apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]
