"""From a data source to training-ready splits: phantom or RSNA directory -> table -> split -> cache.

The search, the seed recipe's baseline and the retrain all read their images through SplitsBySize, so
each image size is decoded once into the cache and every command sees the same rows in the same split.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage_core.cache import build_cache, default_cache_dir
from boneage_core.config import DataSettings
from boneage_core.errors import BoneAgeError
from boneage_core.phantom import TRAIN_CSV, write_phantom
from boneage_core.rsna import DataReport, load_table, split_table

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
    """The table of the splits asked for and their images decoded at one size."""

    table: pd.DataFrame  # id, path, age_months, male, split
    images: np.ndarray  # uint8 (len(table), S, S), memory-mapped
    root: Path
    fingerprint: str = ""  # data_fingerprint of every split before any cap: the dataset's identity

    def split(self, *names: str) -> Split:
        rows = np.flatnonzero(self.table["split"].isin(names).to_numpy())
        if len(rows) == 0:
            raise BoneAgeError(f"the data under {self.root} has no images in split {'+'.join(names)}")
        t = self.table.iloc[rows]
        return Split(
            images=np.asarray(self.images[rows]),
            age_months=t["age_months"].to_numpy(np.float32),
            male=t["male"].to_numpy(bool),
            ids=t["id"].to_numpy(str),
        )


def phantom_dir(n: int, seed: int, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"phantom-n{n}-s{seed}"


def resolve_source(settings: DataSettings, cache_dir: Path | None = None, quiet: bool = True) -> Path:
    """The data directory: the source itself, or the phantom, written once on first use."""
    if settings.source != "phantom":
        return Path(settings.source).expanduser()
    root = phantom_dir(settings.phantom_n, settings.seed, cache_dir)
    if not (root / TRAIN_CSV).is_file():
        if not quiet:
            print(f"writing the embedded phantom dataset ({settings.phantom_n} images) to {root}", flush=True)
        try:
            write_phantom(root, settings.phantom_n, settings.seed, quiet=quiet)
        except OSError as exc:
            raise BoneAgeError(
                f"cannot write the phantom dataset to {root} ({exc.strerror}); set BONEAGE_CACHE_DIR"
            ) from None
    return root


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
    (Sizes, not contents: hashing 12,611 full-size PNGs would cost minutes per command.)"""
    h = hashlib.sha256()
    root = Path(root).resolve()
    for row in table.sort_values("id", kind="stable").itertuples(index=False):
        path = Path(row.path).resolve()
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        h.update(f"{row.id}|{row.age_months:.4f}|{int(row.male)}|{row.split}|{rel}|{os.stat(path).st_size}\n".encode())
    return h.hexdigest()[:16]


def prepare(
    settings: DataSettings,
    image_size: int | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    cache_dir: str | Path | None = None,
    quiet: bool = True,
    report: DataReport | None = None,
) -> DecodedData:
    """The data of the given splits decoded into the cache at image_size (default settings.image_size).
    The search asks for train and val only, so the test images are not even decoded until retrain
    reads them."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    root = resolve_source(settings, cache_dir, quiet)
    table = load_table(root, report)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    split_file = cache_dir / "splits" / f"{root.resolve().name}-{tag}-s{settings.seed}.csv"
    table = split_table(table, settings.seed, split_file)
    fingerprint = data_fingerprint(table, root)
    table = cap_per_split(table[table["split"].isin(splits)], settings.max_images, settings.seed)
    table = table.reset_index(drop=True)
    images = build_cache(table, image_size or settings.image_size, cache_dir, quiet=quiet)
    return DecodedData(table=table, images=images, root=root, fingerprint=fingerprint)


class SplitsBySize:
    """A dataset's splits at every image size asked for: each size is decoded into the cache once (on
    disk, shared by workers) and held here once per process. The rows and their order do not depend on
    the size, so every size sees the same images in the same split."""

    def __init__(self, settings: DataSettings, quiet: bool = True, splits: tuple[str, ...] = ("train", "val")):
        self.settings, self.quiet, self.splits = settings, quiet, splits
        self._held: dict[tuple[int, tuple[str, ...]], Split] = {}
        self._decoded: dict[int, DecodedData] = {}

    def fingerprint(self) -> str:
        """The data's identity (data_fingerprint): the same at every image size."""
        if not self._decoded:
            self.split(self.settings.image_size, self.splits[0])
        return next(iter(self._decoded.values())).fingerprint

    def split(self, image_size: int, *names: str) -> Split:
        key = (image_size, names)
        if key not in self._held:
            if image_size not in self._decoded:
                self._decoded[image_size] = prepare(self.settings, image_size, self.splits, quiet=self.quiet)
            self._held[key] = self._decoded[image_size].split(*names)
        return self._held[key]
