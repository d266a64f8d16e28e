"""The baseline (ResNet-50, Adam lr 1e-3, MSE, 5 epochs, the original project's geometric augmentation) on the
study's data, with several seeds, recorded in the study beside the search it is the yardstick for."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import optuna

from boneage_core.dataset import SplitsBySize
from boneage_core.metrics import regression_metrics
from boneage_core.train import fit
from search.config.specs import StudySpec
from search.storage.provenance import device_description, provenance, record_command
from search.storage.results import BaselineResult, from_json, store, to_json
from search.storage.settings import check_settings, study_settings


def run_baseline(
    spec: StudySpec, study: optuna.Study, quiet: bool = False, seeds: int = 3, argv: list[str] | None = None
) -> BaselineResult:
    """Train the study's baseline on train with `seeds` seeds, score val; stored in the study
    (search.storage.results). val_mae_months is the mean over seeds: with a constant learning rate the
    baseline's last epoch lands anywhere, and its val MAE swung by 3 months between seeds on the phantom, so
    one seed is a poor yardstick for the search. spec is the study's own (search.storage.truth)."""
    data = SplitsBySize(spec.data, quiet)
    check_settings(study, study_settings(spec, data.fingerprint()), store=False)
    command = provenance(argv or [], device_description(spec.baseline.device), data.fingerprint())
    record_command(study, command)
    train = data.split(spec.baseline.image_size, "train")
    val = data.split(spec.baseline.image_size, "val")
    start = time.perf_counter()
    runs = []  # (metrics, history) per seed; the models are not kept
    for k in range(seeds):
        shown = f"baseline, seed {k + 1}/{seeds} ({len(train)} images, {spec.baseline.image_size} px)"
        cfg = dataclasses.replace(spec.baseline, seed=spec.baseline.seed + k)
        result = fit(cfg, train, val, progress=None if quiet else shown)
        runs.append((result.metrics, result.history))
    per_seed = [metrics["mae_months"] for metrics, _ in runs]
    mean_predictor = np.full(len(val), train.age_months.mean())  # the trivial reference: the training mean
    record = BaselineResult(
        val_mae_months=float(np.mean(per_seed)),
        val_mae_per_seed=per_seed,
        val_mae_sd=float(np.std(per_seed, ddof=1)) if seeds > 1 else None,
        mean_predictor_val_mae_months=regression_metrics(mean_predictor, val.age_months)["mae_months"],
        val_metrics_per_seed=[metrics for metrics, _ in runs],
        histories=[history for _, history in runs],
        config=spec.baseline.to_dict(),
        wall_time_s=round(time.perf_counter() - start, 2),
        command=command,
    )
    record = from_json(BaselineResult, to_json(record))  # as every reader will see it: NaN as None
    store(study, record)
    return record
