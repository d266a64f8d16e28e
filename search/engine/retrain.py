"""Retrain the best trial's config and the baseline on train+val; the final test MAE, seed-aware.

The test split is read here and by the report only. Every recipe trains on the same train+val images
and is scored on the same test images, K seeds each: the best trial's config, with --top-k the next
best distinct configurations and their average (the top-k ensemble), with --bias-correction each tuned
model corrected by a line fitted on its trials' val predictions, and the baseline. Every comparison
resamples seeds as well as test images (boneage_core.metrics): on an earlier demo the baseline's
test MAE ran from 13.2 to 19.0 months over three seeds, far more than the test set's own uncertainty.

Every epoch is checkpointed under a key of everything that decides the weights (config, seed, data
fingerprint, the images trained on and scored), so an interrupted retrain resumes where it stopped and
a changed study, best trial or dataset trains anew instead of reusing a stale model. Predictions per
image and seed are written as CSV, so any metric can be recomputed later.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from boneage_core import BoneAgeError
from boneage_core.config import TrainConfig
from boneage_core.dataset import Split, SplitsBySize
from boneage_core.errors import cannot_write
from boneage_core.metrics import (
    apply_correction,
    bootstrap_ci,
    group_counts,
    linear_correction,
    paired_mae_difference,
    paired_seed_aware_difference,
    probability_of_improvement,
    regression_metrics,
    resolvable_difference,
    summarize_seeds,
    verdict,
)
from boneage_core.train import FitResult, fit, predict_months
from search.config.specs import StudySpec
from search.engine.plan import Recipes, checkpoint_key, mae_estimate, recipes, reordered, reselect, top_trials
from search.storage.provenance import device_description, provenance, record_command
from search.storage.results import (
    Comparison,
    Correction,
    Difference,
    Improvement,
    Member,
    RecipeScore,
    Reselection,
    RetrainResult,
    from_json,
    store,
    to_json,
    write_files,
)
from search.storage.settings import check_settings, study_settings
from search.storage.study import attach_files
from search.storage.trials import record_skipped
from search.storage.truth import StudyRef

# Every recipe retrain can score, in the order every table and figure lists them
RECIPES = ("best", "best_corrected", "ensemble", "ensemble_corrected", "baseline")
# Comparisons beyond best minus baseline (the verdict), each (a, b) for a minus b, where both exist:
# the final models against the baseline, the ensemble against its best member, each bias correction
# against the same models uncorrected (before and after).
COMPARED = (
    ("ensemble", "baseline"),
    ("ensemble_corrected", "baseline"),
    ("best_corrected", "baseline"),
    ("ensemble", "best"),
    ("best_corrected", "best"),
    ("ensemble_corrected", "ensemble"),
)


def recipe_score(preds: np.ndarray, test: Split, **what: Any) -> RecipeScore:
    """One recipe's test figures from its (seeds, images) predictions: every metric as mean and SD over
    seeds, the MAE's two-stage bootstrap CI (seeds, then images), and the seed ensemble (the average of
    the seeds' predictions) as a separate, labelled model."""
    per_seed = [regression_metrics(p, test.age_months, test.male) for p in preds]
    over_seeds = summarize_seeds(per_seed)
    ensemble = preds.mean(axis=0)
    ens_abs = np.abs(ensemble - test.age_months)
    return RecipeScore(
        mae=mae_estimate(preds, test),
        mae_per_seed=[m["mae_months"] for m in per_seed],
        metrics_mean=over_seeds["mean"],
        metrics_sd=over_seeds["sd"],
        metrics_per_seed=per_seed,
        seed_ensemble={
            **regression_metrics(ensemble, test.age_months, test.male),
            **dict(zip(("mae_ci_low", "mae_ci_high"), bootstrap_ci(ens_abs), strict=True)),
        },
        pred_months=np.round(preds, 3).tolist(),
        **what,
    )


@dataclasses.dataclass(frozen=True)
class SeedPredictions:
    """One recipe's K seeds scored on the test images, in months, each array (seeds, images)."""

    pred_months: np.ndarray  # as the protocol evaluates (batch-norm statistics re-estimated)
    tta_flip: np.ndarray  # averaged over a horizontal flip; empty without --tta
    without_bn_reestimation: np.ndarray  # only where fit was asked for it (the baseline); else empty
    restored_s: float  # the training time of epochs read back from checkpoints (an earlier run's)


def _train_seeds(
    name: str,
    cfg: TrainConfig,
    *,
    label: str,
    seeds: int,
    data: SplitsBySize,
    ckpt_dir: Path,
    tta: bool,
    quiet: bool,
) -> SeedPredictions:
    """K seeds of one recipe on train+val, scored on test: predictions (seeds, images), the same with
    flip TTA, and (for the baseline) without batch-norm re-estimation."""
    trainval, test = data.split(cfg.image_size, "train", "val"), data.split(cfg.image_size, "test")
    preds, tta_preds, without_preds, restored = [], [], [], 0.0
    for k in range(seeds):
        c = dataclasses.replace(cfg, seed=cfg.seed + k)
        shown = f"retrain {label}, seed {k + 1}/{seeds} ({len(trainval)} images, {c.image_size} px)"
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
        restored += r.restored_time_s
        if r.pred_months_without_bn_reestimation is not None:
            without_preds.append(r.pred_months_without_bn_reestimation)
        if tta:
            tta_preds.append(predict_months(r, test, dataclasses.replace(c, tta_flip=True)))
    return SeedPredictions(np.array(preds), np.array(tta_preds), np.array(without_preds), restored)


def bias_corrections(plan: Recipes, val_months: np.ndarray) -> dict[str, Correction]:
    """Slope and intercept for the best recipe and (with top-k) the ensemble, each fitted on the val
    predictions its trials made when they were searched: images those models never trained on. A
    BoneAgeError, before anything trains, where --set changed the recipe."""
    if plan.overrides["best"]:
        raise BoneAgeError(
            "--bias-correction fits its line on the trials' own val predictions, which a --set train.* change "
            "of what the recipe learns makes stale; drop one or the other"
        )
    for m in plan.members:
        if m.val_pred_months is None or len(m.val_pred_months) != len(val_months):
            raise BoneAgeError(f"--bias-correction: trial {m.trial} recorded no val prediction for every val image")
    best = np.array(plan.members[0].val_pred_months)
    out = {"best": Correction(**linear_correction(best, val_months), trials=[plan.best_trial])}
    if len(plan.members) > 1:
        ensemble = np.mean([m.val_pred_months for m in plan.members], axis=0)
        out["ensemble"] = Correction(**linear_correction(ensemble, val_months), trials=[m.trial for m in plan.members])
    return out


def _tuned_models(
    plan: Recipes, seeds: int, data: SplitsBySize, ckpt_dir: Path, tta: bool, quiet: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[Member]]:
    """Each top-k member trained (the best first; with top_k 1 only the best)."""
    test = data.split(plan.configs["best"].image_size, "test")
    preds, tta_preds, members = {}, {}, []
    for m in plan.members:
        start = time.perf_counter()
        label = "best" if m.rank == 1 else f"top-{m.rank} trial {m.trial}"
        trained = _train_seeds(
            m.name, m.config, label=label, seeds=seeds, data=data, ckpt_dir=ckpt_dir, tta=tta, quiet=quiet
        )
        preds[m.name], tta_preds[m.name] = trained.pred_months, trained.tta_flip
        members.append(
            Member(
                rank=m.rank,
                trial=m.trial,
                val_mae_months=m.val_mae_months,
                params=m.params,
                config=m.config.to_dict(),
                mae=mae_estimate(preds[m.name], test),
                mae_per_seed=np.abs(preds[m.name] - test.age_months).mean(axis=1).tolist(),
                wall_time_s=round(time.perf_counter() - start + trained.restored_s, 1),
                pred_months=np.round(preds[m.name], 3).tolist(),
            )
        )
    return preds, tta_preds, members


def _derived(
    preds: dict[str, np.ndarray], tta_preds: dict[str, np.ndarray], plan: Recipes, corrections: dict[str, Correction]
) -> None:
    """The final models built from trained ones, added in place: the top-k ensemble (for each seed k,
    the average of every member's seed-k model) and each bias-corrected model."""
    names = [m.name for m in plan.members]
    if len(names) > 1:
        preds["ensemble"] = np.mean([preds[n] for n in names], axis=0)
        if all(len(tta_preds[n]) for n in names):
            tta_preds["ensemble"] = np.mean([tta_preds[n] for n in names], axis=0)
    for name, line in corrections.items():
        preds[f"{name}_corrected"] = apply_correction(preds[name], dataclasses.asdict(line))
        if len(tta_preds.get(name, [])):
            tta_preds[f"{name}_corrected"] = apply_correction(tta_preds[name], dataclasses.asdict(line))


def retrain(
    spec: StudySpec,
    study: optuna.Study,
    ref: StudyRef,
    seeds: int = 3,
    tta: bool = False,
    train_overrides: dict[str, Any] | None = None,
    baseline_overrides: dict[str, Any] | None = None,
    results_dir: Path = Path("results"),
    checkpoint_dir: Path = Path("checkpoints"),
    quiet: bool = False,
    argv: list[str] | None = None,
    top_k: int = 1,
    bias_correction: bool = False,
    reselect_k: int = 0,
    reselect_seeds: int = 3,
    on_choice: Callable[[Reselection], None] | None = None,
) -> RetrainResult:
    """The tuned recipe (with top_k > 1: the k best distinct configurations, and their ensemble) and the
    study's baseline (changed only by baseline_overrides), K seeds each, on the study's data. spec is
    the study's own (search.storage.truth). bias_correction adds each tuned model corrected by a line fitted on
    its trials' val predictions. reselect_k > 1 first retrains the reselect_k best distinct
    configurations on train with reselect_seeds fresh seeds each, scored on val, and carries the lowest
    seed-mean val MAE to the final test as the best (search.engine.plan.reselect). The command (argv)
    is recorded in the study before training; the result is stored in the study
    (search.storage.results), the only copy every view reads; the prediction files and retrain.json
    in results/<study>/ are copies, attached to the study as artifacts."""
    data = SplitsBySize(spec.data, quiet, splits=("train", "val", "test"))
    check_settings(study, study_settings(spec, data.fingerprint()), store=False)
    asked = "--reselect" if reselect_k > top_k else "--top-k"
    candidates = top_trials(study, max(top_k, reselect_k), ref.hint("run"), asked)
    overrides = train_overrides or {}
    plan = recipes(study, spec, overrides, baseline_overrides, trials=candidates)  # checked before anything trains
    val_months = data.split(spec.train.image_size, "val").age_months
    corrections = bias_corrections(plan, val_months) if bias_correction else {}
    device = device_description(spec.train.device)
    command = provenance(argv or [], device, data.fingerprint())
    record_command(study, command)
    record_skipped(study, data.skipped())
    test = data.split(spec.train.image_size, "test")  # the same rows at any size: for counts and labels
    out_dir, ckpt_dir = _output_dirs(results_dir / spec.name, checkpoint_dir / spec.name)
    chosen = None
    if reselect_k > 1:  # the plan above held every candidate; now the top_k in the chosen order
        chosen = reselect(plan, reselect_k, reselect_seeds, data, ckpt_dir, quiet, device)
        if on_choice is not None:  # said as soon as it is made, not only when the final test ends
            on_choice(chosen)
        plan = recipes(study, spec, overrides, baseline_overrides, trials=reordered(candidates, chosen)[:top_k])
        corrections = bias_corrections(plan, val_months) if bias_correction else {}
    preds, tta_preds, members = _tuned_models(plan, seeds, data, ckpt_dir, tta, quiet)
    start = time.perf_counter()
    baseline = _train_seeds(
        "baseline",
        plan.configs["baseline"],
        label="baseline",
        seeds=seeds,
        data=data,
        ckpt_dir=ckpt_dir,
        tta=tta,
        quiet=quiet,
    )
    preds["baseline"], tta_preds["baseline"] = baseline.pred_months, baseline.tta_flip
    seed_wall = round(time.perf_counter() - start + baseline.restored_s, 1)
    _derived(preds, tta_preds, plan, corrections)
    scores = {}
    for name in (n for n in RECIPES if n in preds):  # best, its correction, the ensemble, its correction, baseline
        what: dict[str, Any] = {}
        if name in ("best", "baseline"):
            what["config"] = plan.configs[name].to_dict()
        else:
            what["trials"] = [m.trial for m in members] if name.startswith("ensemble") else [plan.best_trial]
        if len(tta_preds.get(name, [])):
            what["tta_flip"] = mae_estimate(tta_preds[name], test)
        if name == "best":
            what["wall_time_s"] = members[0].wall_time_s
        elif name == "ensemble":  # every member's training, the best's included
            what["wall_time_s"] = round(sum(m.wall_time_s for m in members), 1)
        elif name == "baseline":
            what["wall_time_s"] = seed_wall
            without = baseline.without_bn_reestimation
            if len(without):  # the baseline evaluated exactly as the original project did
                what["without_bn_reestimation"] = mae_estimate(without, test)
        scores[name] = recipe_score(preds[name], test, **what)
    result = RetrainResult(
        study=spec.name,
        best_trial=plan.best_trial,
        n_trainval=len(data.split(spec.train.image_size, "train", "val")),
        seeds=seeds,
        tta=tta,
        top_k=len(plan.members),
        test_ids=[str(i) for i in test.ids],
        test_age_months=[round(float(a), 4) for a in test.age_months],  # as labelled, not float32's tail
        test_male=[bool(m) for m in test.male],
        group_n=group_counts(test.age_months, test.male),
        data_fingerprint=data.fingerprint(),
        recipes=scores,
        members=members,
        best_minus_baseline=comparison(preds["best"], preds["baseline"], test),
        comparisons={
            f"{a}_minus_{b}": comparison(preds[a], preds[b], test) for a, b in COMPARED if a in preds and b in preds
        },
        overrides=plan.overrides,
        baseline_modified=plan.baseline_modified,
        bias_correction=corrections,
        command=command,
        best_minus_baseline_tta_flip=comparison(tta_preds["best"], tta_preds["baseline"], test) if tta else None,
        reselection=chosen,
    )
    result = from_json(RetrainResult, to_json(result))  # as every reader will see it: NaN as None
    store(study, result)
    try:
        written = write_files(result, out_dir)
    except OSError as exc:
        stored = f"the result is stored in the study; {ref.hint('report')} writes them"
        raise cannot_write(f"the copies in {out_dir}/", exc, stored) from None
    attach_files(study, ref.url, written)  # copies, listed in optuna-dashboard
    return result


def _output_dirs(out_dir: Path, ckpt_dir: Path) -> tuple[Path, Path]:
    """results/<study>/ and checkpoints/<study>/, made. An earlier retrain's prediction files stay until
    the new result is stored: results.write_files replaces them then, so the folder never mixes two."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(f"results or checkpoints ({out_dir}, {ckpt_dir})", exc) from None
    return out_dir, ckpt_dir


# Seeds a side for which the report states the smallest difference a comparison resolves
RESOLVED_AT = (3, 5, 10)


def comparison(a: np.ndarray, b: np.ndarray, test: Split) -> Comparison:
    """A minus B on the same test images: the seed-aware paired difference and its verdict,
    P(improvement), the difference 3, 5 and 10 seeds a side (and the seeds used) would resolve from
    the spread measured, and, labelled apart, the difference of the two seed ensembles (a CI over
    images only)."""
    true = test.age_months
    d = paired_seed_aware_difference(a, b, true)
    ens = paired_mae_difference(np.abs(a.mean(0) - true), np.abs(b.mean(0) - true))
    resolvable = None
    if min(len(a), len(b)) > 1:
        at = sorted({*RESOLVED_AT, min(len(a), len(b))})
        resolvable = {str(k): round(resolvable_difference(a, b, true, k), 3) for k in at}
        resolvable["unlimited"] = round(resolvable_difference(a, b, true, 10**9), 3)  # the test images' spread alone
    return Comparison(
        **d,
        verdict=verdict(d),
        ensembles=Difference(**ens),
        improvement=Improvement(**probability_of_improvement(a, b, true)),
        resolvable_months=resolvable,
    )
