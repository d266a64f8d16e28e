"""The seed recipe (ResNet-50, Adam lr 1e-3, MSE, 5 epochs) on the study's data, recorded in the study."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from boneage_core.metrics import mae_months
from boneage_core.train import fit
from search.runner import load_study, prepare_search_data
from search.specs import StudySpec


def run_baseline(spec: StudySpec, url: str, quiet: bool = False, seeds: int = 3) -> dict:
    """Train the [baseline] recipe on train with `seeds` seeds, score val; stored as the study attr
    'baseline'. val_mae_months is the mean over seeds: with a constant learning rate the seed recipe's
    last epoch lands anywhere, and its val MAE swung by 6 months between seeds on the phantom, so one
    seed is a poor yardstick for the search."""
    data = prepare_search_data(spec, quiet)
    study = load_study(spec, url, heartbeat=False)
    train, val = data.split("train"), data.split("val")
    start = time.perf_counter()
    runs = []  # (metrics, history) per seed; the models are not kept
    for k in range(seeds):
        if not quiet and seeds > 1:
            print(f"seed {k + 1}/{seeds}", flush=True)
        result = fit(dataclasses.replace(spec.baseline, seed=spec.baseline.seed + k), train, val, quiet=quiet)
        runs.append((result.metrics, result.history))
    per_seed = [metrics["mae_months"] for metrics, _ in runs]
    record = {
        "val_mae_months": float(np.mean(per_seed)),
        "val_mae_per_seed": per_seed,
        "val_mae_sd": float(np.std(per_seed, ddof=1)) if seeds > 1 else 0.0,
        # the trivial reference: predict the training mean for everyone
        "mean_predictor_val_mae_months": mae_months(np.full(len(val), train.age_months.mean()), val.age_months),
        "val_metrics": runs[0][0],  # of the first seed
        "history": runs[0][1],
        "histories": [history for _, history in runs],
        "config": spec.baseline.to_dict(),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    study.set_user_attr("baseline", record)
    return record
