"""How small can the embedded default be while a search still has something to find?

Trains the seed recipe and tuned recipes with fit() at several data sizes, image sizes and epoch
counts on the phantom, one seed each, and prints one JSON line per run: val MAE in months after every
epoch (or training MAE, for the rows scored on the training images), and wall time. This is the
measurement behind the README's "Sizing the embedded default".

    python scripts/sizing_probe.py            # every row (about 20 minutes on 2 CPU cores)
    python scripts/sizing_probe.py 0 3        # rows 0 and 3 only
"""

from __future__ import annotations

import json
import sys
import time

from boneage_core.config import TrainConfig
from boneage_core.dataset import prepare
from boneage_core.train import fit

SEED = {"epochs": 5, "batch_size": 32, "lr": 1e-3, "schedule": "none", "loss": "mse", "aug_strength": 0.5}
TUNED = {"schedule": "cosine", "loss": "l1", "use_sex": True, "aug_strength": 0.1}
# (phantom images, px, recipe); 70% of the images are for training
ROWS = [
    (600, 48, SEED),
    (600, 48, TUNED),
    (600, 48, {**TUNED, "epochs": 10}),
    (600, 48, {**TUNED, "epochs": 15, "aug_strength": 0.8}),
    (600, 64, TUNED),
    (600, 96, TUNED),
    (300, 48, SEED),
    (300, 48, {**TUNED, "batch_size": 16, "aug_strength": 0.2}),
    (1200, 48, SEED),
    (1200, 48, {**TUNED, "batch_size": 16, "aug_strength": 0.2}),
    (2000, 32, SEED),
    (2000, 32, TUNED),
    (2000, 32, {**TUNED, "epochs": 2}),
    # scored on the training images themselves: does the recipe underfit or overfit?
    (600, 48, {"score_on": "train"}),
    (600, 48, {**TUNED, "epochs": 10, "aug_strength": 0.0, "score_on": "train"}),
]


def main(picked: list[int]) -> None:
    for i in picked:
        n, px, recipe = ROWS[i]
        data = prepare("phantom", px, seed=0, phantom_n=n, splits=("train", "val"))
        fields = {k: v for k, v in {**SEED, **recipe}.items() if k != "score_on"}
        cfg = TrainConfig(image_size=px, **fields)
        start = time.perf_counter()
        result = fit(cfg, data.split("train"), data.split(recipe.get("score_on", "val")))
        row = {"row": i, "phantom_n": n, "px": px, **{k: v for k, v in recipe.items() if SEED.get(k) != v}}
        row.update(
            wall_s=round(time.perf_counter() - start, 1),
            val_mae=[round(h["val_mae_months"], 2) for h in result.history],
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or list(range(len(ROWS))))
