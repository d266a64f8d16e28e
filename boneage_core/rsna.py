"""RSNA bone-age data as downloaded -> one clean table: id, path, age_months, male, split.

Reads the Kaggle copy and the official RSNA release without renaming anything (the layouts accepted
are listed in the README, "Real RSNA data"). Every problem with the files is a BoneAgeError naming the
file, the column and the fix. The val and test sets a release lacks are carved from its training rows
by boneage_core.splits.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from boneage_core.errors import BoneAgeError

log = logging.getLogger(__name__)

MAX_AGE_MONTHS = 300.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_TRUE = {"true", "t", "1", "1.0", "m", "male", "yes"}
_FALSE = {"false", "f", "0", "0.0", "female", "no"}
MAX_SKIPPED_SHARE = 0.05  # more missing or unreadable images than this in a split: a broken download


@dataclass(frozen=True)
class LabelSource:
    """One label file of a layout and where its images live, relative to the data root."""

    split: str
    label_file: str
    image_dirs: tuple[str, ...]
    id_col: str
    age_col: str
    sex_col: str


KAGGLE_TRAIN = LabelSource(
    "train", "boneage-training-dataset.csv", ("boneage-training-dataset",), "id", "boneage", "male"
)
OFFICIAL_VAL = LabelSource(
    "val",
    "Bone Age Validation Set/Validation Dataset.csv",
    (
        "Bone Age Validation Set/boneage-validation-dataset-1",
        "Bone Age Validation Set/boneage-validation-dataset-2",
        "Bone Age Validation Set",
    ),
    "Image ID",
    "Bone Age (months)",
    "male",
)
OFFICIAL_TEST = LabelSource(
    "test",
    "Bone Age Test Set/Bone age ground truth.xlsx",
    ("Bone Age Test Set/Test Set Images", "Bone Age Test Set"),
    "Case ID",
    "Ground truth bone age (months)",
    "Sex",
)
# The official training release also ships with its CSV inside a folder of its own name.
OFFICIAL_TRAIN = LabelSource(
    "train", "Bone Age Training Set/train.csv", ("Bone Age Training Set",), "id", "boneage", "male"
)


@dataclass(frozen=True)
class Skipped:
    """A labelled image that is not used, and why: 'missing', 'empty file', 'not a readable image (truncated)'."""

    split: str
    id: str
    path: str
    reason: str


@dataclass
class DataReport:
    """What load_table found, for `data check`, for the one warning about skipped images and for the study."""

    layout: str = ""
    label_files: list[str] = field(default_factory=list)
    labelled: dict[str, int] = field(default_factory=dict)  # split -> rows in its label file
    skipped: list[Skipped] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)  # splits this layout can have but this copy lacks, and why

    def skipped_in(self, split: str) -> list[Skipped]:
        return [s for s in self.skipped if s.split == split]

    def check_share(self, max_share: float = MAX_SKIPPED_SHARE) -> None:
        """BoneAgeError when a split lost more than max_share of its images (and more than one): a broken
        download, not a few bad files."""
        for split, n in self.labelled.items():
            bad = self.skipped_in(split)
            if len(bad) > max(1.0, max_share * n):
                first = ", ".join(f"{b.split}/{b.id} ({b.reason})" for b in bad[:3])
                raise BoneAgeError(
                    f"split {split}: {len(bad)} of {n} labelled images ({len(bad) / n:.0%}) are missing or unreadable, "
                    f"more than the {max_share:.0%} a few bad files explain: the download looks incomplete; "
                    f"complete it or remove those rows from the label file (first: {first})"
                )

    def summary_of(self, skipped: list[Skipped]) -> str:
        """'3 of 1200 labelled images are skipped (2 missing, 1 empty file): train/a.png (missing), ...'"""
        n = sum(k for split, k in self.labelled.items() if split in {s.split for s in skipped})
        reasons = Counter(s.reason for s in skipped)
        first = ", ".join(f"{s.split}/{s.id} ({s.reason})" for s in skipped[:3])
        more = ", ..." if len(skipped) > 3 else ""
        how = ", ".join(f"{k} {r}" for r, k in reasons.most_common())
        return f"{len(skipped)} of {n} labelled images are skipped ({how}): {first}{more}"


def _label_candidates(root: Path, rel: str) -> list[Path]:
    """Where one label file may lie: as released, in a doubled folder (Kaggle's copy doubles folders),
    at the root, or one folder deeper; as .csv or .xlsx, the spelling released first."""
    rel_path = Path(rel)
    stems = [rel_path.with_suffix(s) for s in dict.fromkeys((rel_path.suffix, ".csv", ".xlsx"))]
    out: list[Path] = []
    for r in stems:
        out.append(root / r)
        if len(r.parts) > 1:
            out.append(root / r.parts[0] / r)
        out.append(root / r.name)
        out += sorted(root.glob(f"*/{glob.escape(r.name)}"))
    return out


def _find_label(root: Path, src: LabelSource) -> Path | None:
    return next((p for p in _label_candidates(root, src.label_file) if p.is_file()), None)


def _read_labels(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            return pd.read_excel(path)
        return pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for an unreadable file
        raise BoneAgeError(f"{path}: cannot read label file ({type(exc).__name__}: {exc})") from None


def _parse_male(values: pd.Series, path: Path, col: str) -> np.ndarray:
    text = values.map(lambda v: "" if pd.isna(v) else str(v)).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BoneAgeError(
            f"{path}: row {row + 2}, column '{col}' has unrecognised sex value "
            f"{'' if pd.isna(values.iloc[row]) else values.iloc[row]!r} "
            "(expected True/False, 1/0 or M/F)"
        )
    return text.isin(_TRUE).to_numpy()


def _clean_labels(df: pd.DataFrame, path: Path, src: LabelSource) -> pd.DataFrame:
    """id, age_months, male from one label file, with every value checked."""
    df.columns = [str(c).strip() for c in df.columns]
    for col in (src.id_col, src.age_col, src.sex_col):
        if col not in df.columns:
            raise BoneAgeError(f"{path}: required column '{col}' is missing (found: {', '.join(map(str, df.columns))})")
    ages = pd.to_numeric(df[src.age_col], errors="coerce")
    for i, (raw, age) in enumerate(zip(df[src.age_col], ages, strict=True)):
        if not np.isfinite(age) or age < 0 or age > MAX_AGE_MONTHS:
            raise BoneAgeError(
                f"{path}: row {i + 2}, column '{src.age_col}' = {raw!r} is not an age in months "
                f"between 0 and {MAX_AGE_MONTHS:g}"
            )
    # an empty cell is NaN, which astype(str) keeps as NaN in pandas 3: made "" first, then refused below
    ids = df[src.id_col].map(lambda v: "" if pd.isna(v) else str(v)).str.strip().str.replace(r"\.0$", "", regex=True)
    for i, case in enumerate(ids):
        if not case or case in (".", "..") or "/" in case or "\\" in case or os.path.isabs(case):
            raise BoneAgeError(
                f"{path}: row {i + 2}, column '{src.id_col}' = {case!r} is not an image id (a file name "
                "without folders): ids never name paths"
            )
    dup = ids[ids.duplicated()]
    if len(dup):
        raise BoneAgeError(f"{path}: duplicate id {dup.iloc[0]!r} in column '{src.id_col}'")
    return pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "age_months": ages.to_numpy(float),
            "male": _parse_male(df[src.sex_col], path, src.sex_col),
        }
    )


def _index_images(root: Path, dirs: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image stem -> path for every image under the given folders, and stem -> every path for a stem
    that two different files bear (1380.png and 1380.jpg, or one name in two folders). Symlinked files
    and folders are followed (a dataset assembled from links, or pointing at a shared copy), each real
    folder once, so a link loop ends; the path kept is the one under root. Label ids are matched to
    file names, never joined into paths, so no label can reach outside root."""
    found: dict[str, Path] = {}
    twins: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for d in dirs:
        base = root / d
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if p.stem not in found:
                    found[p.stem] = p
                elif os.path.realpath(p) != os.path.realpath(found[p.stem]):  # a link to the same file is no twin
                    twins.setdefault(p.stem, [found[p.stem]]).append(p)
    return found, twins


def _expected_but_not_found(root: Path, sources: list[tuple[LabelSource, Path]]) -> list[str]:
    """The official splits this copy lacks; a warning where the split's folder is there but its label file is not."""
    have = {src.split for src, _ in sources}
    notes = []
    for src in (OFFICIAL_VAL, OFFICIAL_TEST):
        if src.split in have:
            continue
        folder = Path(src.label_file).parts[0]
        other = Path(src.label_file).with_suffix(".csv" if src.label_file.endswith(".xlsx") else ".xlsx").name
        expected = f"'{src.label_file}' (or '{other}')"
        if (root / folder).is_dir():
            note = f"{src.split}: folder '{folder}' is there but its label file {expected} was not found"
            log.warning("%s: %s; the %s split is carved from the training images instead", root, note, src.split)
        else:
            note = f"{src.split}: not in this copy (the official release has {expected})"
        notes.append(note)
    return notes


def detect_layout(root: Path) -> tuple[str, list[tuple[LabelSource, Path]]]:
    """Which release this directory holds and its label files, or a BoneAgeError saying what is missing."""
    if not root.exists():
        raise BoneAgeError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise BoneAgeError(f"data path {root} is not a directory")
    if not any(root.iterdir()):
        raise BoneAgeError(f"data directory {root} is empty")
    train = _find_label(root, KAGGLE_TRAIN)
    train_src = KAGGLE_TRAIN
    if train is None:
        train, train_src = _find_label(root, OFFICIAL_TRAIN), OFFICIAL_TRAIN
    if train is None:
        raise BoneAgeError(
            f"{root}: no training label file found; expected '{KAGGLE_TRAIN.label_file}' "
            f"(Kaggle copy) or '{OFFICIAL_TRAIN.label_file}' (official RSNA release)"
        )
    sources = [(train_src, train)]
    for src in (OFFICIAL_VAL, OFFICIAL_TEST):
        path = _find_label(root, src)
        if path is not None:
            sources.append((src, path))
    layout = "official RSNA release" if len(sources) > 1 else "Kaggle copy (training set only)"
    return layout, sources


def load_table(root: str | Path, report: DataReport | None = None) -> pd.DataFrame:
    """All usable labelled images under root: columns id, path, age_months, male, split (as released).

    Every labelled image is screened (missing, empty, not a file, truncated, unreadable header, too
    small or too large): the unusable ones are dropped and listed in report.skipped. A split none of
    whose images was found is a BoneAgeError; the share of skipped images is report.check_share's call.
    """
    root = Path(root)
    report = report if report is not None else DataReport()
    report.layout, sources = detect_layout(root)
    report.not_found = _expected_but_not_found(root, sources)
    frames = []
    for src, path in sources:
        report.label_files.append(str(path.relative_to(root)))
        labels = _clean_labels(_read_labels(path), path, src)
        # the Kaggle training images may sit in a doubled folder (the walk finds them there), or beside
        # a label file found one folder deeper
        beside = path.parent.relative_to(root)
        dirs = src.image_dirs + ((str(beside),) if beside != Path(".") else ())
        images, twins = _index_images(root, dirs)
        twin = next((c for c in labels["id"] if c in twins), None)  # which file it labels cannot be told
        if twin is not None:
            raise BoneAgeError(
                f"{path}: id {twin!r} has {len(twins[twin])} images, "
                f"{' and '.join(str(t.relative_to(root)) for t in twins[twin])}; keep the one it labels"
            )
        labels["path"] = [str(images[i]) if i in images else "" for i in labels["id"]]
        report.labelled[src.split] = len(labels)
        if (labels["path"] == "").all():
            raise BoneAgeError(
                f"{path}: none of its {len(labels)} images was found under "
                f"{', '.join(str(root / d) for d in src.image_dirs)} (looked for <id>.png)"
            )
        reasons = _screen_all(labels["path"])
        for case, image, reason in zip(labels["id"], labels["path"], reasons, strict=True):
            if reason is not None:
                report.skipped.append(Skipped(src.split, case, image, reason))
        labels = labels[[r is None for r in reasons]].copy()
        labels["split"] = src.split
        frames.append(labels)
    table = pd.concat(frames, ignore_index=True)
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise BoneAgeError(f"{root}: image id {dup.iloc[0]!r} appears in more than one split")
    if table.empty:
        raise BoneAgeError(f"{root}: no usable image: {report.summary_of(report.skipped)}")
    return table[["id", "path", "age_months", "male", "split"]]


def _screen_all(paths: pd.Series) -> list[str | None]:
    """screen_image for every path ('' = not found), in threads: the test is file reads, mostly waiting."""
    from boneage_core.images import screen_image

    def one(p: str) -> str | None:
        return "missing" if not p else screen_image(p)

    with ThreadPoolExecutor(min(16, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(one, paths))
