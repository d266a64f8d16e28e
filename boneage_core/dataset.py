"""From a data source to training-ready splits: phantom or RSNA directory -> table -> split -> cache."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage_core.cache import build_cache, default_cache_dir
from boneage_core.data import DataReport, data_fingerprint, load_table, split_table
from boneage_core.errors import BoneAgeError
from boneage_core.phantom import TRAIN_CSV, write_phantom
from boneage_core.train import Split

log = logging.getLogger(__name__)


@dataclass
class Prepared:
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


def resolve_source(source: str, phantom_n: int, seed: int, cache_dir: Path | None = None, quiet: bool = True) -> Path:
    """The data directory: the source itself, or the phantom, written once on first use."""
    if source != "phantom":
        return Path(source).expanduser()
    root = phantom_dir(phantom_n, seed, cache_dir)
    if not (root / TRAIN_CSV).is_file():
        if not quiet:
            print(f"writing the embedded phantom dataset ({phantom_n} images) to {root}", flush=True)
        try:
            write_phantom(root, phantom_n, seed)
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


def prepare(
    source: str,
    image_size: int,
    seed: int = 0,
    max_images: int = 0,
    phantom_n: int = 1000,
    cache_dir: str | Path | None = None,
    quiet: bool = True,
    report: DataReport | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> Prepared:
    """The data of the given splits, decoded into the cache. The search asks for train and val only,
    so the test images are not even decoded until retrain reads them."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    root = resolve_source(source, phantom_n, seed, cache_dir, quiet)
    table = load_table(root, report)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    split_file = cache_dir / "splits" / f"{root.resolve().name}-{tag}-s{seed}.csv"
    table = split_table(table, seed, split_file)
    fingerprint = data_fingerprint(table, root)
    table = cap_per_split(table[table["split"].isin(splits)], max_images, seed).reset_index(drop=True)
    images = build_cache(table, image_size, cache_dir, quiet=quiet)
    return Prepared(table=table, images=images, root=root, fingerprint=fingerprint)
