"""Retrain the best trial's config and the seed baseline on train+val; the final test MAE.

The test split is read here and by the report only. Both recipes train on the same train+val images
and are scored on the same test images, K seeds each; every epoch is checkpointed, so an interrupted
retrain resumes where it stopped. Predictions per image are written as CSV so any metric can be
recomputed later.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from boneage_core import BoneAgeError
from boneage_core.config import TrainConfig, make_config
from boneage_core.metrics import bootstrap_ci, paired_mae_difference, regression_metrics
from boneage_core.train import fit, predict_months
from search.runner import StudyData
from search.space import ParamSpec, config_from_params
from search.specs import StudySpec


def stored_space(study: optuna.Study, spec: StudySpec) -> dict[str, ParamSpec]:
    stored = study.user_attrs.get("spec", {}).get("space")
    if stored is None:
        return spec.space
    return {k: ParamSpec(**{**v, "choices": tuple(v.get("choices", ()))}) for k, v in stored.items()}


def recipes(study: optuna.Study, spec: StudySpec, train_overrides: dict[str, Any]) -> dict[str, TrainConfig]:
    """The best trial's config, rebuilt with suggest_config on a FixedTrial of its params over the
    study's stored fixed fields, and the stored baseline; explicit --set train.* overrides both."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise BoneAgeError(f"study '{study.study_name}' has no completed trial yet: run `python -m search run` first")
    stored = study.user_attrs.get("spec", {})
    base = make_config(stored["train"]) if "train" in stored else spec.train
    baseline = make_config(stored["baseline"]) if "baseline" in stored else spec.baseline
    best = config_from_params(study.best_trial.params, base, stored_space(study, spec))
    return {
        "best": make_config(train_overrides, best),
        "baseline": make_config(train_overrides, baseline),
    }


def _write_predictions(path: Path, ids, true, male, pred: np.ndarray) -> None:
    pd.DataFrame({"id": ids, "age_months": true, "male": male, "pred_months": np.round(pred, 3)}).to_csv(
        path, index=False
    )


def retrain(
    spec: StudySpec,
    study: optuna.Study,
    seeds: int = 1,
    tta: bool = False,
    train_overrides: dict[str, Any] | None = None,
    results_dir: Path = Path("results"),
    checkpoint_dir: Path = Path("checkpoints"),
    quiet: bool = False,
) -> dict[str, Any]:
    configs = recipes(study, spec, train_overrides or {})
    data = StudyData(spec, quiet, splits=("train", "val", "test"))
    test = data.split(spec.train.image_size, "test")  # the same rows at any size: for counts and labels
    trainval_n = len(data.split(spec.train.image_size, "train", "val"))
    out_dir = results_dir / spec.name
    ckpt_dir = checkpoint_dir / spec.name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoneAgeError(f"cannot write results or checkpoints ({exc.strerror}: {exc.filename})") from None
    summary: dict[str, Any] = {
        "study": spec.name,
        "best_trial": study.best_trial.number,
        "n_trainval": trainval_n,
        "n_test": len(test),
        "seeds": seeds,
        "recipes": {},
    }
    abs_err: dict[str, np.ndarray] = {}  # per test image, averaged over seeds
    for name, cfg in configs.items():
        per_seed, preds, tta_preds, start = [], [], [], time.perf_counter()
        # each recipe at its own image size (a searched size may differ from the baseline's)
        trainval, test = data.split(cfg.image_size, "train", "val"), data.split(cfg.image_size, "test")
        for k in range(seeds):
            c = dataclasses.replace(cfg, seed=cfg.seed + k)
            if not quiet:
                where = f"{len(trainval)} images at {c.image_size} px"
                print(f"retrain {name}, seed {k + 1}/{seeds}: {c.epochs} epochs on {where}", flush=True)
            r = fit(c, trainval, test, checkpoint=ckpt_dir / f"{name}-seed{k}.pt", eval_each_epoch=False)
            preds.append(r.val_pred_months)
            per_seed.append(r.metrics["mae_months"])
            _write_predictions(
                out_dir / f"predictions_{name}_seed{k}.csv", test.ids, test.age_months, test.male, r.val_pred_months
            )
            if tta:
                tta_preds.append(predict_months(r, test, dataclasses.replace(c, tta_flip=True)))
        abs_err[name] = np.mean([np.abs(p - test.age_months) for p in preds], axis=0)
        entry = {
            "config": cfg.to_dict(),
            "mae_per_seed": per_seed,
            "mae_mean": float(np.mean(per_seed)),
            "mae_sd": float(np.std(per_seed, ddof=1)) if seeds > 1 else 0.0,
            # CI over images of the seed-averaged absolute error: the uncertainty from the test set's size
            **dict(zip(("mae_ci_low", "mae_ci_high"), bootstrap_ci(abs_err[name]), strict=True)),
            "metrics_seed0": regression_metrics(preds[0], test.age_months, test.male),
            "wall_time_s": round(time.perf_counter() - start, 1),
        }
        if tta:
            entry["tta_flip_mae_mean"] = float(np.mean([np.mean(np.abs(p - test.age_months)) for p in tta_preds]))
        summary["recipes"][name] = entry
    summary["best_minus_baseline"] = paired_mae_difference(abs_err["best"], abs_err["baseline"])
    (out_dir / "retrain.json").write_text(json.dumps(summary, indent=2))
    return summary
