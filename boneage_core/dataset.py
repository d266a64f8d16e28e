"""From a data source to training-ready splits: phantom or RSNA directory -> table -> split -> cache.

The search, the baseline and the retrain all read their images through SplitsBySize, so
each image size is decoded once into the cache and every command sees the same rows in the same split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from boneage_core.cache import build_cache, default_cache_dir
from boneage_core.errors import BoneAgeError, cannot_write
from boneage_core.files import private_tmp, remove_abandoned_tmp, written_into_place
from boneage_core.phantom import PHANTOM_VERSION, TRAIN_CSV, write_phantom
from boneage_core.rsna import DataReport, Skipped, load_table
from boneage_core.splits import SPLITS, split_table

if TYPE_CHECKING:
    from boneage_core.config import DataSettings

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split ready for training: uint8 images (n, S, S), ages in months, sex, ids."""

    images: np.ndarray
    age_months: np.ndarray
    male: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.age_months)


@dataclass
class DecodedData:
    """The table of the splits asked for and their images decoded at one size, one cache file per split."""

    table: pd.DataFrame  # id, path, age_months, male, split: the usable rows, split by split
    images: dict[str, np.ndarray]  # split -> uint8 (n, S, S), memory-mapped: that split's cache file
    root: Path
    fingerprint: str = ""  # data_fingerprint of every split's usable images before any cap
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # split -> its usable rows, where one was skipped
    skipped: list[Skipped] = field(default_factory=list)  # labelled images not used, and why

    def split(self, *names: str) -> Split:
        """The images of the named splits. One split is its memory-mapped cache file itself (K workers
        share one copy of its pages), or a copy of its usable rows where an image failed to decode;
        several (retrain's train+val) are one copy."""
        present = [n for n in names if n in self.images]
        if not present:
            raise BoneAgeError(f"the data under {self.root} has no images in split {'+'.join(names)}")
        parts = [self.images[n] if n not in self.rows else np.asarray(self.images[n][self.rows[n]]) for n in present]
        t = pd.concat([self.table[self.table["split"] == n] for n in present])
        return Split(
            images=parts[0] if len(parts) == 1 else np.concatenate(parts),
            age_months=t["age_months"].to_numpy(np.float32),
            male=t["male"].to_numpy(bool),
            ids=t["id"].to_numpy(str),
        )


def phantom_dir(n: int, seed: int, cache_dir: Path | None = None) -> Path:
    """Where the phantom of n images and this seed is written once; a new phantom version is a new folder."""
    return (cache_dir or default_cache_dir()) / f"phantom-v{PHANTOM_VERSION}-n{n}-s{seed}"


def resolve_source(settings: DataSettings, cache_dir: Path | None = None, quiet: bool = True) -> Path:
    """The data directory: the source itself, or the phantom, written once on first use."""
    if settings.source != "phantom":  # absolute: 'ph', './ph/' and '/abs/ph' read (and cache) the same files
        return Path(os.path.abspath(Path(settings.source).expanduser()))
    root = phantom_dir(settings.phantom_n, settings.seed, cache_dir)
    if not (root / TRAIN_CSV).is_file():
        if not quiet:
            print(f"writing the embedded phantom dataset ({settings.phantom_n} images) to {root}", flush=True)
        # written aside and renamed into place whole: two runs started at once (two workers' commands, two
        # machines sharing the cache) each write their own, and no run reads a half-written image
        remove_abandoned_tmp(root)
        tmp = private_tmp(root)
        try:
            write_phantom(tmp, settings.phantom_n, settings.seed, quiet=quiet)
            _move_into_place(tmp, root)
        except OSError as exc:
            raise cannot_write(f"the phantom dataset to {root}", exc, "set BONEAGE_CACHE_DIR") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, root: Path, attempts: int = 3) -> None:
    """The complete phantom in tmp renamed to root. Where another process got there first, its phantom
    (the same images: the phantom is deterministic) stays and tmp is dropped; a root without the label
    file is an unfinished write (of a version that wrote in place), removed."""
    for _ in range(attempts):
        try:
            os.rename(tmp, root)
            return
        except OSError:
            if (root / TRAIN_CSV).is_file():
                return
            shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)


def cap_per_split(table: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """At most max_images rows per split, a seeded sample (0 = all)."""
    if max_images <= 0:
        return table
    parts = [g.sample(n=min(len(g), max_images), random_state=seed) for _, g in table.groupby("split", sort=False)]
    return pd.concat(parts).sort_index()


def data_fingerprint(table: pd.DataFrame, root: Path) -> str:
    """The identity of a dataset as a study uses it: every row's id, label, sex and split, and its image
    file's path under root and size in bytes. The same data copied or moved elsewhere (a new phantom
    cache, another disk) keeps it; an added, dropped, relabelled, resplit or replaced image changes it.
    (Sizes, not contents: hashing 12,611 full-size PNGs would cost minutes per command.) The path is
    the one under root even where it is a symlink to another disk, so relinking the same files keeps it."""
    h = hashlib.sha256()
    root, real_root = Path(root), Path(root).resolve()
    for row in table.sort_values("id", kind="stable").itertuples(index=False):
        path = Path(row.path)
        if path.is_relative_to(root):
            rel = path.relative_to(root)
        else:
            rel = path.resolve().relative_to(real_root) if path.resolve().is_relative_to(real_root) else path.resolve()
        h.update(f"{row.id}|{row.age_months:.4f}|{int(row.male)}|{row.split}|{rel}|{os.stat(path).st_size}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def _check_writable(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as exc:
        raise BoneAgeError(
            f"cache directory {cache_dir} is not writable ({exc.strerror or exc}); set BONEAGE_CACHE_DIR"
        ) from None


def _save_skipped(skipped: list[Skipped], out: Path) -> Path:
    """Every skipped image (split, id, path, reason), in the cache directory."""
    frame = pd.DataFrame([dataclasses.asdict(s) for s in skipped], columns=["split", "id", "path", "reason"])
    try:
        with written_into_place(out) as tmp:  # workers and machines sharing the cache write the same list
            frame.to_csv(tmp, index=False)
    except OSError as exc:
        raise cannot_write(str(out), exc, "set BONEAGE_CACHE_DIR") from None
    return out


def prepare(
    settings: DataSettings,
    image_size: int | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    cache_dir: str | Path | None = None,
    quiet: bool = True,
    report: DataReport | None = None,
    warn: bool = True,
) -> DecodedData:
    """The data of the given splits decoded into the cache at image_size (default settings.image_size).
    The search asks for train and val only, so the test images are not even decoded until retrain
    reads them. Images that did not arrive whole are skipped with one warning and listed beside the
    cache; more than MAX_SKIPPED_SHARE of a split is a BoneAgeError."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    _check_writable(cache_dir)
    root = resolve_source(settings, cache_dir, quiet)
    report = report if report is not None else DataReport()
    table = load_table(root, report)
    report.check_share()  # a broken download is told before minutes of decoding, and again after it
    tag = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:10]
    split_file = cache_dir / "splits" / f"{root.resolve().name}-{tag}-s{settings.seed}.csv"
    labelled_as = dict(zip(table["id"], table["split"], strict=True))  # the label file's split, for the counts
    try:
        table = split_table(table, settings.seed, split_file)
    except OSError as exc:
        raise cannot_write(f"the split file {split_file}", exc) from None
    fingerprint = data_fingerprint(table, root)
    table = cap_per_split(table[table["split"].isin(splits)], settings.max_images, settings.seed)
    size = image_size or settings.image_size
    images, rows, kept = {}, {}, []
    for name in (s for s in SPLITS if s in set(table["split"])):  # one cache file per split
        part = table[table["split"] == name].reset_index(drop=True)
        images[name], failed = build_cache(part, size, cache_dir, quiet=quiet, what=name)
        used = np.ones(len(part), bool)
        for i, reason in failed.items():
            used[i] = False
            case = part["id"].iloc[i]
            report.skipped.append(Skipped(labelled_as[case], case, part["path"].iloc[i], reason))
        if not used.all():
            rows[name] = np.flatnonzero(used)
        kept.append(part[used])
    skipped = [s for s in report.skipped if s.split in splits or not s.split]
    if skipped:
        listed = _save_skipped(skipped, cache_dir / f"skipped-{fingerprint}-{'+'.join(splits)}.csv")
        if warn:
            log.warning("%s; the full list is in %s", report.summary_of(skipped), listed)
    report.check_share()
    return DecodedData(
        table=pd.concat(kept, ignore_index=True),
        images=images,
        root=root,
        fingerprint=fingerprint,
        rows=rows,
        skipped=skipped,
    )


class SplitsBySize:
    """A dataset's splits at every image size asked for: each size is decoded into the cache once (on
    disk, shared by workers) and held here once per process. The rows and their order do not depend on
    the size, so every size sees the same images in the same split."""

    def __init__(
        self, settings: DataSettings, quiet: bool = True, splits: tuple[str, ...] = ("train", "val"), warn: bool = True
    ):
        """warn: say once (at the first size decoded) which images are skipped; run's workers leave it to
        the first process."""
        self.settings, self.quiet, self.splits, self.warn = settings, quiet, splits, warn
        self._held: dict[tuple[int, tuple[str, ...]], Split] = {}
        self._decoded: dict[int, DecodedData] = {}

    def skipped(self) -> list[Skipped]:
        """The labelled images of these splits that are not used, and why (the same at every size)."""
        if not self._decoded:
            self.split(self.settings.image_size, self.splits[0])
        return next(iter(self._decoded.values())).skipped

    def fingerprint(self) -> str:
        """The data's identity (data_fingerprint): the same at every image size."""
        if not self._decoded:
            self.split(self.settings.image_size, self.splits[0])
        return next(iter(self._decoded.values())).fingerprint

    def split(self, image_size: int, *names: str) -> Split:
        key = (image_size, names)
        if key not in self._held:
            if image_size not in self._decoded:
                first = not self._decoded
                self._decoded[image_size] = prepare(
                    self.settings, image_size, self.splits, quiet=self.quiet, warn=self.warn and first
                )
            self._held[key] = self._decoded[image_size].split(*names)
        return self._held[key]
