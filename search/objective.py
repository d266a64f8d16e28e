"""One trial: draw a config, train it, report val MAE in months every epoch, prune hopeless ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
import torch

from boneage_core import BoneAgeError, TrainingDiverged
from boneage_core.train import fit
from search.space import suggest_config
from search.specs import StudySpec

if TYPE_CHECKING:
    from search.runner import StudyData

# Trial failures that say something about the parameters, not about the program: the trial is
# recorded as failed with its reason and the search goes on.
TRIAL_FAILURES = (TrainingDiverged, torch.OutOfMemoryError, BoneAgeError)
CLAIMED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.WAITING,
)


class BudgetReached(Exception):
    """Another worker took the last trial of the budget between our check and our ask."""


def make_objective(spec: StudySpec, data: StudyData, n_trials: int) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        earlier = trial.study.get_trials(deepcopy=False, states=CLAIMED)
        if sum(t.number < trial.number for t in earlier) >= n_trials:
            trial.set_user_attr("fail_reason", f"not run: the study already holds {n_trials} trials")
            raise BudgetReached()
        cfg = suggest_config(trial, spec.train, spec.space)
        trial.set_user_attr("config", cfg.to_dict())
        start = time.perf_counter()
        # a searched image size is decoded on its first use, inside the trial that needs it
        train, val = data.split(cfg.image_size, "train"), data.split(cfg.image_size, "val")
        history: list[dict] = []

        def on_epoch_end(epoch: int, row: dict) -> None:
            history.append(row)
            trial.set_user_attr("history", history)
            trial.set_user_attr("epochs_run", epoch)
            trial.set_user_attr("wall_time_s", round(time.perf_counter() - start, 2))
            trial.report(row["val_mae_months"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val MAE {row['val_mae_months']:.2f} months after epoch {epoch}")

        try:
            result = fit(cfg, train, val, on_epoch_end)
        except TRIAL_FAILURES as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            if isinstance(exc, torch.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise
        trial.set_user_attr("wall_time_s", round(time.perf_counter() - start, 2))
        trial.set_user_attr("val_metrics", result.metrics)
        return result.metrics["mae_months"]

    return objective
