"""boneage_core.cache: decode once, hit, invalidate, atomic; one shared file per split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import boneage_core.cache as cache_mod
from boneage_core import BoneAgeError
from boneage_core.cache import build_cache
from boneage_core.config import DataSettings
from boneage_core.dataset import prepare
from boneage_core.device import split_tensors
from boneage_core.phantom import PHANTOM_VERSION
from boneage_core.rsna import load_table
from tests.conftest import corrupt_but_whole_png, hand_png


def test_cache_hits_without_decoding_and_misses_on_change(kaggle_dir, tmp_path, monkeypatch):
    table = load_table(kaggle_dir)
    calls = []
    real = cache_mod._decode_row
    monkeypatch.setattr(cache_mod, "_decode_row", lambda p, s: calls.append(p) or real(p, s))
    first, failed = build_cache(table, 32, tmp_path / "c", quiet=True)
    assert first.shape == (12, 32, 32) and first.dtype == np.uint8 and len(calls) == 12 and failed == {}
    assert isinstance(first, np.memmap)
    second, _ = build_cache(table, 32, tmp_path / "c", quiet=True)
    assert len(calls) == 12 and np.array_equal(first, second)  # hit: nothing decoded
    build_cache(table, 40, tmp_path / "c", quiet=True)  # another size is another cache
    assert len(calls) == 24
    # a changed image invalidates the cache
    changed = kaggle_dir / "boneage-training-dataset" / "1380.png"
    hand_png(changed, 3, size=(90, 70))
    third, _ = build_cache(load_table(kaggle_dir), 32, tmp_path / "c", quiet=True)
    assert len(calls) == 36 and not np.array_equal(first[3], third[3])
    # so does an added image
    hand_png(kaggle_dir / "boneage-training-dataset" / "5000.png", 2)
    csv = kaggle_dir / "boneage-training-dataset.csv"
    csv.write_text(csv.read_text() + "5000,100,True\n")
    assert build_cache(load_table(kaggle_dir), 32, tmp_path / "c", quiet=True)[0].shape[0] == 13


def test_an_image_that_fails_to_decode_is_recorded_and_known_on_every_hit(kaggle_dir, tmp_path, monkeypatch):
    corrupt_but_whole_png(kaggle_dir / "boneage-training-dataset" / "1380.png")
    table = load_table(kaggle_dir)  # the quick screen passes it: its end marker is there
    assert "1380" in set(table["id"])
    images, failed = build_cache(table, 32, tmp_path / "c", quiet=True)
    assert list(failed) == [3] and "not a readable image" in failed[3] and images[3].max() == 0
    monkeypatch.setattr(cache_mod, "_decode_row", lambda p, s: pytest.fail("a hit decodes nothing"))
    assert build_cache(table, 32, tmp_path / "c", quiet=True)[1] == failed
    # the list beside the cache is part of it: without it the cache is rebuilt, not trusted
    monkeypatch.undo()
    next((tmp_path / "c").glob("*.unreadable.csv")).unlink()
    assert build_cache(table, 32, tmp_path / "c", quiet=True)[1] == failed


def test_killed_cache_build_leaves_no_cache_that_looks_complete(kaggle_dir, tmp_path, monkeypatch):
    table = load_table(kaggle_dir)
    real = cache_mod._decode_row

    def dies_halfway(path, size):
        if path.endswith("1385.png"):
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache_mod, "_decode_row", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        build_cache(table, 32, tmp_path / "c", quiet=True)
    assert list((tmp_path / "c").iterdir()) == []  # no partial file under any name
    monkeypatch.setattr(cache_mod, "_decode_row", real)
    assert build_cache(table, 32, tmp_path / "c", quiet=True)[0][8].max() > 0


def test_unwritable_cache_dir_is_a_clear_error(kaggle_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BoneAgeError, match="cannot write the image cache"):
        build_cache(load_table(kaggle_dir), 32, blocker / "sub", quiet=True)


def test_each_split_is_its_own_shared_cache_file_not_a_copy(official_dir, tmp_path):
    """Every process maps the same cache file: a split that copied its rows would cost each of K workers
    the whole split in private memory (3.3 GB per worker at 512 px on RSNA)."""
    decoded = prepare(DataSettings(source=str(official_dir)), 32, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("images-*-32px.npy"))) == 3  # one file per split
    for name in ("train", "val", "test"):
        mapped = decoded.images[name]
        assert isinstance(mapped, np.memmap) and mapped.flags.writeable  # copy-on-write: torch takes it as is
        assert decoded.split(name).images is mapped
    images, _ = split_tensors(decoded.split("train"), torch.device("cpu"))
    base = decoded.images["train"].ctypes.data
    assert images.data_ptr() == base  # the tensor reads the mapped pages
    # the search asks for train and val only: the test split is neither decoded nor mapped
    searched = prepare(DataSettings(source=str(official_dir)), 32, ("train", "val"), cache_dir=tmp_path / "c")
    assert set(searched.images) == {"train", "val"}
    assert searched.images["train"].filename == decoded.images["train"].filename  # the same file serves both


def test_a_skipped_image_is_left_out_of_its_split(official_dir, tmp_path):
    corrupt_but_whole_png(official_dir / "Bone Age Validation Set" / "boneage-validation-dataset-1" / "9002.png")
    decoded = prepare(DataSettings(source=str(official_dir)), 32, cache_dir=tmp_path / "c")
    val = decoded.split("val")
    assert len(val) == 5 and "9002" not in set(val.ids) and (val.images.reshape(5, -1).max(axis=1) > 0).all()
    assert [(s.split, s.id) for s in decoded.skipped] == [("val", "9002")]
    listed = pd.read_csv(next((tmp_path / "c").glob("skipped-*.csv")), dtype=str)
    assert listed[["split", "id"]].values.tolist() == [["val", "9002"]]
    assert decoded.split("train").images is decoded.images["train"]  # the other splits stay the mapped files
    both = decoded.split("val", "train")
    assert len(both) == 15 and list(both.ids[:5]) == list(val.ids) and np.array_equal(both.images[:5], val.images)


def _prepare_with_another_writer(settings, cache, monkeypatch, at: int):
    """prepare(), with another writer of the same data doing all of its work between this one's
    writing its at-th file and renaming it into place; the data and the file it came between."""
    real_replace, seen, between = os.replace, [], []

    def replace(src, dst):
        seen.append(dst)
        if len(seen) == at + 1 and not between:
            between.append(Path(dst))
            with monkeypatch.context() as m:
                m.setattr(os, "replace", real_replace)
                prepare(settings, 32, cache_dir=cache)  # the other writer, start to end
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        decoded = prepare(settings, 32, cache_dir=cache)
    return decoded, between[0] if between else None


def _whole(decoded, n: int, cache: Path) -> bool:
    splits = [decoded.split(s) for s in ("train", "val", "test")]
    leftovers = [p for p in cache.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    return (
        sum(map(len, splits)) == n
        and all((s.images.reshape(len(s), -1).max(1) > 0).all() for s in splits)
        and not leftovers
    )


def test_the_phantom_written_by_two_at_once_is_whole_for_both(tmp_path, monkeypatch):
    """Two runs (two machines sharing a cache, or two commands on one) both find the phantom absent: the
    other writes and places a whole phantom between this one's writing its labels and placing them.
    Each writes its phantom aside and renames it into place, so both read every image."""
    decoded, between = _prepare_with_another_writer(DataSettings(phantom_n=24), tmp_path / "c", monkeypatch, at=0)
    assert between.name == "boneage-training-dataset.csv"
    assert _whole(decoded, 24, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir() if "phantom" in p.name] == [f"phantom-v{PHANTOM_VERSION}-n24-s0"]


def test_a_phantom_write_that_died_is_cleaned_up_by_the_next_and_a_live_ones_is_not(tmp_path):
    """kill -9 during a phantom write leaves its half-written directory under a temporary name: the next
    write removes it when its process is gone on this machine, never one still writing or another
    machine's (a cache directory on a shared disk)."""
    import socket
    import subprocess
    import sys

    from boneage_core.dataset import phantom_dir, resolve_source

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = phantom_dir(24, 0, tmp_path / "c")
    here = socket.gethostname()
    left = {
        "dead": root.with_name(f".{root.name}.0a1b2c3d.{int(dead.stdout)}@{here}.tmp"),
        "live": root.with_name(f".{root.name}.0a1b2c3e.{os.getpid()}@{here}.tmp"),
        "elsewhere": root.with_name(f".{root.name}.0a1b2c3f.{int(dead.stdout)}@not-{here}.tmp"),
    }
    for d in left.values():
        (d / "boneage-training-dataset").mkdir(parents=True)
        (d / "boneage-training-dataset" / "1000.png").write_bytes(b"half")
    resolve_source(DataSettings(phantom_n=24), tmp_path / "c")
    assert {k: d.exists() for k, d in left.items()} == {"dead": False, "live": True, "elsewhere": True}
    assert len(list((root / "boneage-training-dataset").glob("*.png"))) == 24


def test_every_cache_file_written_by_two_at_once_is_whole_for_both(official_dir, tmp_path, monkeypatch):
    """The same for every file prepare writes (the cache of each split, the list of skipped images), the
    other writer coming between each in turn: each writer's temporary names are its own."""
    corrupt_but_whole_png(official_dir / "Bone Age Validation Set" / "boneage-validation-dataset-1" / "9002.png")
    settings, between = DataSettings(source=str(official_dir)), []
    for at in range(10):
        decoded, name = _prepare_with_another_writer(settings, tmp_path / f"c{at}", monkeypatch, at)
        if name is None:
            break
        between.append(name.suffixes[-2] if name.name.endswith(".unreadable.csv") else name.name.split("-")[0])
        assert _whole(decoded, 19, tmp_path / f"c{at}"), name
    assert set(between) == {"images", ".unreadable", "skipped"}  # caches, their lists, the skipped list
