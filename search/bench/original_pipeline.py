"""The original project's data path, for the data-path benchmark to race against: RSNA-size PNGs (2044x1514,
8- and 16-bit, film grain so they compress like scans) and the original project's PIL + torchvision + DataLoader
pipeline, which decodes every PNG in every epoch."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from boneage_core.phantom import generate_image

RSNA_HW = (2044, 1514)  # a typical RSNA scan, portrait


def write_fullsize(path: Path, seed: int, index: int, sixteen_bit: bool, compress_level: int = 6) -> dict:
    """One phantom hand at RSNA size with film grain (so it compresses like a scan), 8-bit or 16-bit with
    12 bits used (as many DICOM exports store them)."""
    image, age, male, _ = generate_image(seed, index)
    big = np.asarray(Image.fromarray(image, mode="F").resize(RSNA_HW[::-1], Image.Resampling.BICUBIC))
    big = np.clip(big + np.random.default_rng([seed, index, 2]).normal(0, 0.01, big.shape), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sixteen_bit:
        Image.fromarray((big * 4095).astype(np.uint16)).save(path, format="PNG", compress_level=compress_level)
    else:
        Image.fromarray((big * 255 + 0.5).astype(np.uint8), mode="L").save(
            path, format="PNG", compress_level=compress_level
        )
    return {"path": str(path), "age_months": age, "male": male, "bits": 16 if sixteen_bit else 8}


def _write_fullsize(args: tuple[Path, int, int]) -> dict:
    out_dir, seed, index = args
    row = write_fullsize(out_dir / f"{5000 + index}.png", seed, index, sixteen_bit=bool(index % 2))
    return {"id": 5000 + index, **row}


def make_fullsize_images(out_dir: Path, n: int, seed: int = 0) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, seed, i) for i in range(n)]
    with ProcessPoolExecutor(min(os.cpu_count() or 1, n)) as pool:
        return pd.DataFrame(list(pool.map(_write_fullsize, jobs)))


class SeedPipelineDataset(torch.utils.data.Dataset):
    """The original project's data path: open each PNG with PIL per item, PIL transforms, normalize."""

    def __init__(self, paths: list[str], ages: np.ndarray, size: int, resize_first: bool = False):
        import torchvision.transforms as T

        self.paths, self.ages = paths, ages
        augment = [
            T.RandomRotation(20),
            T.RandomHorizontalFlip(),
            T.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.85, 1.15)),
        ]
        resize = [T.Resize((size, size))]
        steps = resize + augment if resize_first else augment + resize
        self.transform = T.Compose([*steps, T.ToTensor(), T.Normalize([0.5], [0.5])])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            image = img.convert("L")  # as the original project did (this clips 16-bit data; only speed counts here)
        return self.transform(image), torch.tensor(self.ages[i], dtype=torch.float32)


def original_pipeline_epoch_s(table: pd.DataFrame, size: int, batch_size: int, resize_first: bool) -> float:
    """Seconds for one epoch through a fresh DataLoader with one worker per core, as the original project ran it."""
    ds = SeedPipelineDataset(list(table["path"]), table["age_months"].to_numpy(np.float32), size, resize_first)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=os.cpu_count() or 1)
    start = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader)
    assert n == len(table)
    return time.perf_counter() - start
