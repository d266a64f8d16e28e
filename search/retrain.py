"""Retrain the best trial's config and the seed recipe on train+val; the final test MAE, seed-aware.

The test split is read here and by the report only. Both recipes train on the same train+val images
and are scored on the same test images, K seeds each. Every comparison resamples seeds as well as test
images (boneage_core.metrics): on the demo the seed recipe's test MAE ran from 13.2 to 19.0 months
over three seeds, far more than the test set's own uncertainty.

Every epoch is checkpointed under a key of everything that decides the weights (config, seed, data
fingerprint, the images trained on and scored), so an interrupted retrain resumes where it stopped and
a changed study, best trial or dataset trains anew instead of reusing a stale model. Predictions per
image and seed are written as CSV, so any metric can be recomputed later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from boneage_core import BoneAgeError
from boneage_core.config import RUNTIME_FIELDS, TrainConfig, make_config
from boneage_core.dataset import Split, SplitsBySize
from boneage_core.metrics import (
    bootstrap_ci,
    group_counts,
    paired_mae_difference,
    paired_seed_aware_difference,
    regression_metrics,
    seed_aware_mae,
    summarize_seeds,
    verdict,
)
from boneage_core.train import FitResult, fit, predict_months
from search.files import finite, write_atomic, write_json
from search.record import (
    check_settings,
    config_changes,
    device_description,
    provenance,
    record_command,
    record_skipped,
    study_settings,
)
from search.report import NAMES, save_study_note
from search.space import ParamSpec, config_from_params
from search.specs import StudySpec
from search.study import attach_files, name_the_metric

RECIPES = ("best", "baseline")  # the tuned recipe and the seed recipe, in every file and table


@dataclasses.dataclass
class Recipes:
    """What retrain trains: each recipe's config, and how it departs from the study's record."""

    configs: dict[str, TrainConfig]
    best_trial: int
    overrides: dict[str, dict[str, list[Any]]]  # {recipe: {field: [recorded, used]}} from --set
    seed_recipe_modified: dict[str, list[Any]]  # every change to the seed recipe as the study file defines it


def stored_space(study: optuna.Study, spec: StudySpec) -> dict[str, ParamSpec]:
    stored = study.user_attrs.get("settings", {}).get("space")
    if stored is None:
        return spec.space
    return {k: ParamSpec(**{**v, "choices": tuple(v.get("choices", ()))}) for k, v in stored.items()}


def recipes(
    study: optuna.Study,
    spec: StudySpec,
    train_overrides: dict[str, Any],
    baseline_overrides: dict[str, Any] | None = None,
) -> Recipes:
    """The best trial rebuilt from the config that trial itself recorded (through suggest_config on a
    FixedTrial of its params, so search and retrain read parameters alike), and the seed recipe the
    study recorded at its creation. --set train.* changes the best recipe only and --set baseline.* the
    seed recipe only; runtime fields (device) apply to both. spec is the study file without those --set
    values. Every change is returned, to be recorded and shown."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise BoneAgeError(f"study '{study.study_name}' has no completed trial yet: run `python -m search run` first")
    best_trial = study.best_trial
    recorded = best_trial.user_attrs.get("config")
    base = make_config(recorded) if recorded else spec.train
    best = config_from_params(best_trial.params, base, stored_space(study, spec))
    runtime = {k: v for k, v in train_overrides.items() if k in RUNTIME_FIELDS}
    best_used = make_config(train_overrides, best)
    recorded_seed = study.user_attrs.get("settings", {}).get("baseline")
    seed_base = make_config({**recorded_seed, "device": spec.baseline.device}) if recorded_seed else spec.baseline
    seed_used = make_config({**runtime, **(baseline_overrides or {})}, seed_base)
    return Recipes(
        configs={"best": best_used, "baseline": seed_used},
        best_trial=best_trial.number,
        overrides={"best": config_changes(best, best_used), "baseline": config_changes(seed_base, seed_used)},
        # against the study file's [baseline]: changes made when the study was created and here
        seed_recipe_modified=config_changes(spec.baseline, seed_used),
    )


def checkpoint_key(cfg: TrainConfig, fingerprint: str, trained: Split, scored: Split) -> str:
    """Everything that decides a checkpoint's weights and what it is scored on, hashed: a change to any
    makes a new checkpoint file, so no stale model is ever loaded."""
    h = hashlib.sha256()
    config = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    h.update(json.dumps({"config": config, "data": fingerprint}, sort_keys=True).encode())
    for split in (trained, scored):
        h.update(("|".join(map(str, split.ids)) + "\n").encode())
    return h.hexdigest()[:12]


def _write_predictions(path: Path, test: Split, pred: np.ndarray) -> None:
    frame = pd.DataFrame({"id": test.ids, "age_months": test.age_months, "male": test.male, "pred_months": pred})
    write_atomic(path, frame.round({"pred_months": 3}).to_csv(index=False))


def recipe_statistics(preds: np.ndarray, test: Split) -> dict[str, Any]:
    """One recipe's test figures from its (seeds, images) predictions: every metric as mean and SD over
    seeds, the MAE's two-stage bootstrap CI (seeds, then images), and the seed ensemble (the average of
    the seeds' predictions) as a separate, labelled model."""
    per_seed = [regression_metrics(p, test.age_months, test.male) for p in preds]
    over_seeds = summarize_seeds(per_seed)
    ensemble = preds.mean(axis=0)
    ens_abs = np.abs(ensemble - test.age_months)
    return {
        "mae": seed_aware_mae(preds, test.age_months),
        "mae_per_seed": [m["mae_months"] for m in per_seed],
        "metrics_mean": over_seeds["mean"],
        "metrics_sd": over_seeds["sd"],
        "metrics_per_seed": per_seed,
        "ensemble": {
            **regression_metrics(ensemble, test.age_months, test.male),
            **dict(zip(("mae_ci_low", "mae_ci_high"), bootstrap_ci(ens_abs), strict=True)),
        },
    }


def _train_seeds(name: str, cfg: TrainConfig, seeds: int, data: SplitsBySize, ckpt_dir: Path, tta: bool, quiet: bool):
    """K seeds of one recipe on train+val, scored on test: predictions (seeds, images), the same with
    flip TTA, and (for the seed recipe) without batch-norm re-estimation."""
    trainval, test = data.split(cfg.image_size, "train", "val"), data.split(cfg.image_size, "test")
    preds, tta_preds, raw_preds = [], [], []
    for k in range(seeds):
        c = dataclasses.replace(cfg, seed=cfg.seed + k)
        shown = f"retrain {NAMES[name]}, seed {k + 1}/{seeds} ({len(trainval)} images, {c.image_size} px)"
        key = checkpoint_key(c, data.fingerprint(), trainval, test)
        r: FitResult = fit(
            c,
            trainval,
            test,
            checkpoint=ckpt_dir / f"{name}-seed{k}-{key}.pt",
            eval_each_epoch=False,
            eval_without_bn_reestimation=name == "baseline",
            progress=None if quiet else shown,
            eval_label="test",
        )
        preds.append(r.pred_months)
        if r.pred_months_without_bn_reestimation is not None:
            raw_preds.append(r.pred_months_without_bn_reestimation)
        if tta:
            tta_preds.append(predict_months(r, test, dataclasses.replace(c, tta_flip=True)))
    return np.array(preds), np.array(tta_preds), np.array(raw_preds)


def retrain(
    spec: StudySpec,
    study: optuna.Study,
    seeds: int = 3,
    tta: bool = False,
    train_overrides: dict[str, Any] | None = None,
    baseline_overrides: dict[str, Any] | None = None,
    results_dir: Path = Path("results"),
    checkpoint_dir: Path = Path("checkpoints"),
    quiet: bool = False,
    argv: list[str] | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Both recipes, K seeds each, on the study's data, which must match the study's settings (the seed
    recipe is the study's own, changed only by baseline_overrides). The command (argv) is recorded in
    the study before training; the outcome goes to results/<study>/retrain.json and, in short, to the
    study's 'retrain' attr (what status shows) and its note in optuna-dashboard. With the study's url,
    retrain.json and the prediction files are attached to the study as artifacts."""
    data = SplitsBySize(spec.data, quiet, splits=("train", "val", "test"))
    check_settings(study, study_settings(spec, data.fingerprint()), ignore=("baseline",))
    plan = recipes(study, spec, train_overrides or {}, baseline_overrides)
    command = provenance(argv or [], device_description(spec.train.device), data.fingerprint())
    record_command(study, command)
    record_skipped(study, data.skipped())
    test = data.split(spec.train.image_size, "test")  # the same rows at any size: for counts and labels
    out_dir, ckpt_dir = _output_dirs(results_dir / spec.name, checkpoint_dir / spec.name)
    summary: dict[str, Any] = {
        "study": spec.name,
        "best_trial": plan.best_trial,
        "n_trainval": len(data.split(spec.train.image_size, "train", "val")),
        "n_test": len(test),
        "seeds": seeds,
        "tta": tta,
        "overrides": plan.overrides,
        "seed_recipe_modified": plan.seed_recipe_modified,
        "group_n": group_counts(test.age_months, test.male),
        "data_fingerprint": data.fingerprint(),
        "command": command,
        "recipes": {},
    }
    preds, tta_preds = {}, {}
    for name in RECIPES:
        cfg, start = plan.configs[name], time.perf_counter()
        preds[name], tta_preds[name], raw = _train_seeds(name, cfg, seeds, data, ckpt_dir, tta, quiet)
        for k, p in enumerate(preds[name]):
            _write_predictions(out_dir / f"predictions_{name}_seed{k}.csv", test, p)
        entry = {"config": cfg.to_dict(), **recipe_statistics(preds[name], test)}
        if tta:
            entry["tta_flip"] = {"mae": seed_aware_mae(tta_preds[name], test.age_months)}
        if len(raw):  # the seed recipe evaluated exactly as the seed project did
            entry["without_bn_reestimation"] = {"mae": seed_aware_mae(raw, test.age_months)}
        entry["wall_time_s"] = round(time.perf_counter() - start, 1)
        summary["recipes"][name] = entry
    summary["best_minus_baseline"] = comparison(preds["best"], preds["baseline"], test)
    if tta:
        summary["best_minus_baseline_tta_flip"] = comparison(tta_preds["best"], tta_preds["baseline"], test)
    summary = finite(summary)
    _record(study, summary, out_dir, url)
    return summary


def _record(study: optuna.Study, summary: dict[str, Any], out_dir: Path, url: str | None) -> None:
    """retrain.json; in the study, the outcome in short (what status shows), the dashboard note and,
    with the study's url, retrain.json and the predictions as artifacts."""
    write_json(out_dir / "retrain.json", summary)
    short = {n: {"mae": r["mae"], "config": r["config"]} for n, r in summary["recipes"].items()}
    study.set_user_attr("retrain", {**{k: v for k, v in summary.items() if k != "recipes"}, "recipes": short})
    name_the_metric(study)
    save_study_note(study, summary)
    if url is not None:
        attach_files(study, url, [out_dir / "retrain.json", *sorted(out_dir.glob("predictions_*_seed*.csv"))])


def _output_dirs(out_dir: Path, ckpt_dir: Path) -> tuple[Path, Path]:
    """results/<study>/ and checkpoints/<study>/, made; the prediction files of an earlier retrain with
    more seeds removed, so the report never mixes two retrains."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoneAgeError(f"cannot write results or checkpoints ({exc.strerror}: {exc.filename})") from None
    for stale in out_dir.glob("predictions_*_seed*.csv"):
        stale.unlink()
    return out_dir, ckpt_dir


def comparison(best: np.ndarray, seed_recipe: np.ndarray, test: Split) -> dict[str, Any]:
    """Best minus seed recipe on the same test images: the seed-aware paired difference and its verdict,
    and, labelled apart, the difference of the two seed ensembles (a CI over images only)."""
    d = paired_seed_aware_difference(best, seed_recipe, test.age_months)
    ens = paired_mae_difference(np.abs(best.mean(0) - test.age_months), np.abs(seed_recipe.mean(0) - test.age_months))
    return {**d, "verdict": verdict(d), "ensembles": ens}
