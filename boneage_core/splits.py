"""The seeded train/val/test split: official val and test sets are kept, what a release lacks is carved
from its training rows, stratified by age bin and sex, and saved so that every later command reuses it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from boneage_core.errors import BoneAgeError
from boneage_core.files import written_into_place

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # in the order every command lists them


def age_bins(age_months: np.ndarray) -> np.ndarray:
    """Two-year bins: the strata of the seeded split."""
    return np.minimum(np.asarray(age_months) // 24, 9).astype(int)


def _read_split_file(path: Path) -> pd.Series | None:
    """id -> split from a saved split file; None for one that is damaged (not a CSV of unique ids, each
    train, val or test). The split it held is made again from the same seed, so nothing is lost."""
    try:
        saved = pd.read_csv(path, dtype={"id": str}).set_index("id")["split"]
    except Exception:  # pandas raises many types for a damaged file
        return None
    if not saved.index.is_unique or not set(saved) <= {"train", "val", "test"}:
        return None
    return saved


def split_table(
    table: pd.DataFrame, seed: int, split_file: Path | None = None, val_frac: float = 0.15, test_frac: float = 0.15
) -> pd.DataFrame:
    """Give every row a split: official val/test sets are kept; what is missing comes from a seeded split
    of the training rows stratified by age bin and sex, saved to split_file and reused from it."""
    from sklearn.model_selection import train_test_split

    table = table.copy()
    have = set(table["split"])
    need = [s for s in ("val", "test") if s not in have]
    if not need:
        return table
    if split_file is not None and split_file.is_file():
        saved = _read_split_file(split_file)
        if saved is not None and set(saved.index) == set(table.loc[table["split"] == "train", "id"]):
            train = table["split"] == "train"
            table.loc[train, "split"] = table.loc[train, "id"].map(saved).to_numpy()
            return table
        log.warning("%s is damaged or does not match the training rows; making the split again", split_file)
    train = table[table["split"] == "train"]
    strata = age_bins(train["age_months"].to_numpy()) * 2 + train["male"].to_numpy().astype(int)
    # strata with fewer than 4 members cannot be stratified; fold them into a shared bucket
    counts = pd.Series(strata).value_counts()
    strata = np.where(pd.Series(strata).map(counts).to_numpy() < 4, -1, strata)
    fracs = {"val": val_frac, "test": test_frac}
    held = sum(fracs[s] for s in need)
    n_min = len(need) * 2 + 2
    if len(train) < n_min:
        raise BoneAgeError(f"only {len(train)} labelled training images: at least {n_min} are needed to split")
    rest_ids, held_ids = train_test_split(train["id"], test_size=held, random_state=seed, stratify=strata)
    assign = dict.fromkeys(rest_ids, "train")
    if len(need) == 2:
        held_rows = train.set_index("id").loc[held_ids]
        held_strata = pd.Series(strata, index=train["id"]).loc[held_ids]
        counts = held_strata.value_counts()
        held_strata = np.where(held_strata.map(counts).to_numpy() < 2, -2, held_strata)
        try:
            val_ids, test_ids = train_test_split(
                held_rows.index, test_size=test_frac / held, random_state=seed, stratify=held_strata
            )
        except ValueError:  # too few held rows to stratify: plain seeded split
            val_ids, test_ids = train_test_split(held_rows.index, test_size=test_frac / held, random_state=seed)
        assign.update(dict.fromkeys(val_ids, "val"))
        assign.update(dict.fromkeys(test_ids, "test"))
    else:
        assign.update(dict.fromkeys(held_ids, need[0]))
    mask = table["split"] == "train"
    table.loc[mask, "split"] = table.loc[mask, "id"].map(assign).to_numpy()
    if split_file is not None:
        split_file.parent.mkdir(parents=True, exist_ok=True)
        with written_into_place(split_file) as tmp:  # two machines may write it at once
            table.loc[mask, ["id", "split"]].to_csv(tmp, index=False)
    return table
