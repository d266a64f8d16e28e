"""What a data directory holds, for `data check`: layout, every split found or not, ages, sex, image
modes, and every image that cannot be used, found by the same tests the cache build makes."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from PIL import Image
from tqdm import tqdm

from boneage_core.errors import BoneAgeError
from boneage_core.images import UnusableImage, load_pixels
from boneage_core.rsna import DataReport, Skipped, load_table
from boneage_core.splits import SPLITS

if TYPE_CHECKING:
    from pathlib import Path


def _decodes(path: str) -> tuple[str, str | None]:
    """The image's mode and why it cannot be decoded (None: it can), decoding every pixel as the cache does."""
    try:
        with Image.open(path) as img:
            mode = img.mode
        load_pixels(path)
    except UnusableImage as exc:
        return "?", str(exc)
    except OSError as exc:
        return "?", f"cannot be read ({exc.strerror or exc})"
    return mode, None


def check_directory(root: str | Path, quiet: bool = True) -> tuple[str, str | None]:
    """A human summary of the data under root, and the one-line reason it cannot be used (None: usable).

    Every labelled image is decoded in full, so what this calls usable is exactly what `run` uses."""
    report = DataReport()
    table = load_table(root, report)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        done = pool.map(_decodes, table["path"])
        results = list(tqdm(done, total=len(table), desc="decoding every image", unit="img", disable=quiet))
    modes = Counter(mode for mode, reason in results if reason is None)
    for row, (_, reason) in zip(table.itertuples(index=False), results, strict=True):
        if reason is not None:
            report.skipped.append(Skipped(row.split, row.id, row.path, reason))
    usable = table[[reason is None for _, reason in results]]
    lines = [f"layout: {report.layout}", f"label files: {', '.join(report.label_files)}"]
    for split in SPLITS:
        if split in report.labelled:
            bad = report.skipped_in(split)
            why = Counter(s.reason for s in bad)
            detail = f" ({', '.join(f'{k} {r}' for r, k in why.most_common())})" if bad else ""
            lines.append(
                f"split {split}: {report.labelled[split]} labelled, {int((usable['split'] == split).sum())} usable, "
                f"{len(bad)} skipped{detail}"
            )
    lines += [f"split {note}" for note in report.not_found]
    if set(report.labelled) == {"train"}:
        lines.append("no official val/test sets: a seeded split stratified by age and sex will be made")
    elif missing := [s for s in ("val", "test") if s not in report.labelled]:
        lines.append(f"no {' or '.join(missing)} set: a seeded split of the training images stands in")
    ages = usable["age_months"]
    if len(usable):
        lines.append(f"age: {ages.min():.1f} to {ages.max():.1f} months, mean {ages.mean():.1f}, SD {ages.std():.1f}")
        lines.append(f"sex: {int(usable['male'].sum())} male, {int((~usable['male']).sum())} female")
    lines.append("image modes: " + ", ".join(f"{m} x{n}" for m, n in modes.most_common()))
    lines.append(f"skipped images: {len(report.skipped)}")
    lines += [f"  {s.split}/{s.id}: {s.reason}" for s in report.skipped]
    try:
        report.check_share()
    except BoneAgeError as exc:
        return "\n".join(lines), str(exc)
    return "\n".join(lines), None
