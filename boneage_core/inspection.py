"""What a data directory holds, for `data check`: layout, splits, ages, sex, image modes, unreadable files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

from boneage_core.errors import BoneAgeError
from boneage_core.rsna import DataReport, load_table


def check_directory(root: str | Path) -> tuple[str, bool]:
    """A human summary of what load_table finds, and whether every listed image is readable."""
    report = DataReport()
    table = load_table(root, report)
    modes: Counter[str] = Counter()
    unreadable = []
    for path in table["path"]:
        try:
            with Image.open(path) as img:
                modes[f"{img.mode} "] += 1
                img.verify()  # checks the whole file (CRCs), catches truncated PNGs
            if Path(path).stat().st_size == 0:
                raise OSError("empty file")
        except Exception as exc:
            unreadable.append(f"{path} ({type(exc).__name__})")
    lines = [f"layout: {report.layout}", f"label files: {', '.join(report.label_files)}"]
    for split, n in table["split"].value_counts().items():
        lines.append(f"split {split}: {n} images (missing {report.missing_images.get(split, 0)})")
    if set(table["split"]) == {"train"}:
        lines.append("no official val/test sets: a seeded split stratified by age and sex will be made")
    ages = table["age_months"]
    lines.append(f"age: {ages.min():.1f} to {ages.max():.1f} months, mean {ages.mean():.1f}, SD {ages.std():.1f}")
    lines.append(f"sex: {int(table['male'].sum())} male, {int((~table['male']).sum())} female")
    lines.append("image modes: " + ", ".join(f"{m.strip()} x{n}" for m, n in modes.most_common()))
    lines.append(f"unreadable images: {len(unreadable)}")
    lines += [f"  {u}" for u in unreadable[:20]]
    return "\n".join(lines), not unreadable


def require_readable(ok: bool, root: str) -> None:
    if not ok:
        raise BoneAgeError(f"{root}: some images are unreadable (listed above); remove or replace them")
