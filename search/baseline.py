"""The seed recipe (ResNet-50, Adam lr 1e-3, MSE, 5 epochs) on the study's data, recorded in the study."""

from __future__ import annotations

import time

import numpy as np

from boneage_core.metrics import mae_months
from boneage_core.train import fit
from search.runner import load_study, prepare_search_data
from search.specs import StudySpec


def run_baseline(spec: StudySpec, url: str, quiet: bool = False) -> dict:
    """Train the [baseline] recipe on train, score val; stored as the study attr 'baseline'."""
    data = prepare_search_data(spec, quiet)
    study = load_study(spec, url, heartbeat=False)
    train, val = data.split("train"), data.split("val")
    start = time.perf_counter()
    result = fit(spec.baseline, train, val, quiet=quiet)
    record = {
        "val_mae_months": result.metrics["mae_months"],
        # the trivial reference: predict the training mean for everyone
        "mean_predictor_val_mae_months": mae_months(np.full(len(val), train.age_months.mean()), val.age_months),
        "val_metrics": result.metrics,
        "history": result.history,
        "config": spec.baseline.to_dict(),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    study.set_user_attr("baseline", record)
    return record
