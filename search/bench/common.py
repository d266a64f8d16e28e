"""What every benchmark shares: how big it runs (full for the committed figures, quick for CI) and the
shape of the section it returns. Imports no torch, so the storage benchmark's spawned workers start
in about a second."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Sizes:
    """How big each benchmark runs: full for the committed figures, quick for CI (under 2 minutes)."""

    data_images: int = 48
    data_px: int = 224
    data_min_s: float = 2.0  # how long our data path runs per measurement
    overhead_pairs: int = 3
    overhead_override: tuple[str, ...] = ()
    search_trials: int = 30
    search_seeds: tuple[int, ...] = (0, 1, 2)  # sampler seeds, each arm run once per seed
    search_jobs: int = 1  # sampler seeds run at once, each in a process on its share of the cores
    search_override: tuple[str, ...] = ()
    storage_trials: int = 200
    cpu_trials: int = 40
    cpu_trial_s: float = 0.25

    @classmethod
    def quick(cls) -> Sizes:
        # one phantom, written once, for both; a small backbone: quick checks that every benchmark runs, the
        # committed figures come from the full sizes with the demo's ResNet-50
        small = ("data.phantom_n=60", "data.image_size=32", "train.backbone=timm:resnet10t", "train.head_hidden=16")
        return cls(
            data_images=4,
            data_min_s=0.2,
            overhead_pairs=1,
            overhead_override=(*small, "train.batch_size=16"),
            search_trials=2,
            search_seeds=(0, 1),
            search_override=(
                *(*small, "space.batch_size.choices=[16, 32]", "train.epochs=2"),  # 42 training images
                *("pruner.n_startup_trials=1", "sampler.n_startup_trials=2"),
            ),
            storage_trials=10,
            cpu_trials=4,
            cpu_trial_s=0.1,
        )


def section(title: str, target: str) -> dict[str, Any]:
    """A benchmark's result: what it measures, its target, whether it was met (None: cannot be told
    here), one line of what was measured, its figures and notes, or why it was skipped."""
    return {"title": title, "target": target, "met": None, "measured": "", "figures": {}, "notes": [], "skipped": ""}
