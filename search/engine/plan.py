"""What retrain trains, decided before anything trains: the best trial's configuration as it recorded
it, the next best distinct configurations (--top-k), the study's baseline, every --set change against
them, the key under which each checkpoint is stored, and the noise-aware final choice (--reselect):
the K best configurations retrained with fresh seeds and scored on val only, the lowest seed-mean
val MAE taking the best's place. The search picks the lowest of many single-seed val MAEs, so its
pick is biased low and partly luck (the winner's curse); a seed mean over fresh seeds is not."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from boneage_core import BoneAgeError
from boneage_core.config import RUNTIME_FIELDS, TrainConfig, settings_from
from boneage_core.dataset import Split, SplitsBySize
from boneage_core.metrics import seed_aware_mae
from boneage_core.train import fit
from search.config.specs import StudySpec
from search.storage.results import Candidate, MaeEstimate, Reselection
from search.storage.settings import config_changes
from search.storage.trials import CONFIG_ATTR, VAL_PREDICTIONS_ATTR, trial_data


@dataclasses.dataclass
class Planned:
    """One of the top-k configurations to train: its rank, trial, val MAE, params and config."""

    rank: int  # 1 is the best trial
    trial: int
    val_mae_months: float
    params: dict[str, Any]
    config: TrainConfig
    val_pred_months: list[float] | None  # the trial's own val predictions

    @property
    def name(self) -> str:
        """Its name in files: 'best' for the best trial, as ever, then 'top2', 'top3', ..."""
        return "best" if self.rank == 1 else f"top{self.rank}"


@dataclasses.dataclass
class Recipes:
    """What retrain trains: each recipe's config, and how it departs from the study's record."""

    configs: dict[str, TrainConfig]
    best_trial: int
    overrides: dict[str, dict[str, list[Any]]]  # {recipe: {field: [recorded, used]}} from --set
    baseline_modified: dict[str, list[Any]]  # retrain's --set baseline.* against the study's baseline
    members: list[Planned] = dataclasses.field(default_factory=list)  # top-k, best first


def top_trials(
    study: optuna.Study, k: int, run_hint: str = "python -m search run", asked: str = "--top-k"
) -> list[optuna.trial.FrozenTrial]:
    """The k best completed trials with distinct parameters, best first (the study's best trial leads;
    a configuration drawn twice counts once, by its better value)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise BoneAgeError(f"study '{study.study_name}' has no completed trial yet: run `{run_hint}` first")
    best = study.best_trial
    ranked = [best] + sorted((t for t in done if t.number != best.number), key=lambda t: (t.value, t.number))
    distinct: dict[str, optuna.trial.FrozenTrial] = {}
    for t in ranked:
        distinct.setdefault(json.dumps(t.params, sort_keys=True), t)
    if len(distinct) < k:
        raise BoneAgeError(
            f"{asked} {k}: study '{study.study_name}' has {len(distinct)} completed "
            f"trial{'' if len(distinct) == 1 else 's'} with "
            f"distinct parameters; ask for {len(distinct)} or fewer, or run more trials"
        )
    return list(distinct.values())[:k]


def _trial_config(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> TrainConfig:
    """The config a trial recorded as it trained, read back as a TrainConfig; runtime fields (device) are
    this command's."""
    recorded = trial_data(trial, CONFIG_ATTR)
    if recorded is None:
        raise BoneAgeError(f"trial {trial.number} recorded no config: it was not run by `python -m search run`")
    runtime = {k: getattr(spec.train, k) for k in RUNTIME_FIELDS}  # where this command runs, not where it did
    return settings_from(TrainConfig, {**recorded, **runtime}, f"trial {trial.number}'s recorded config")


def recipes(
    study: optuna.Study,
    spec: StudySpec,
    train_overrides: dict[str, Any],
    baseline_overrides: dict[str, Any] | None = None,
    top_k: int = 1,
    run_hint: str = "python -m search run",
    trials: list[optuna.trial.FrozenTrial] | None = None,
) -> Recipes:
    """The best trial's config as that trial recorded it, the next top_k - 1 distinct
    configurations alike, and the study's baseline. --set train.* changes the tuned recipes (the best
    and the ensemble's members) only and --set baseline.* the baseline only; runtime fields (device)
    apply to all. spec is the study's own (search.storage.truth). Every change is returned, to be
    recorded and shown. trials, where given, are the configurations to take in their order (the
    first becomes the best: the noise-aware choice), instead of the top_k by val MAE."""
    trials = trials or top_trials(study, top_k, run_hint)
    members = []
    for rank, t in enumerate(trials, start=1):
        cfg = settings_from(TrainConfig, train_overrides, "train", _trial_config(t, spec))
        val_pred = trial_data(t, VAL_PREDICTIONS_ATTR)
        members.append(Planned(rank, t.number, float(t.value), dict(t.params), cfg, val_pred))
    best = _trial_config(trials[0], spec)
    runtime = {k: v for k, v in train_overrides.items() if k in RUNTIME_FIELDS}
    seed_used = settings_from(TrainConfig, {**runtime, **(baseline_overrides or {})}, "baseline", spec.baseline)
    changed = config_changes(spec.baseline, seed_used)
    return Recipes(
        configs={"best": members[0].config, "baseline": seed_used},
        best_trial=trials[0].number,
        overrides={"best": config_changes(best, members[0].config), "baseline": changed},
        baseline_modified=changed,
        members=members,
    )


def checkpoint_key(cfg: TrainConfig, fingerprint: str, trained: Split, scored: Split) -> str:
    """Everything that decides a checkpoint's weights and what it is scored on, hashed: a change to any
    makes a new checkpoint file, so no stale model is ever loaded."""
    h = hashlib.sha256()
    config = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    h.update(json.dumps({"config": config, "data": fingerprint}, sort_keys=True).encode())
    for split in (trained, scored):
        h.update(("|".join(map(str, split.ids)) + "\n").encode(errors="surrogateescape"))
    return h.hexdigest()[:12]


def mae_estimate(preds: np.ndarray, test: Split) -> MaeEstimate:
    return MaeEstimate(**seed_aware_mae(preds, test.age_months))


def reselect(
    plan: Recipes, k: int, seeds: int, data: SplitsBySize, ckpt_dir: Path, quiet: bool, device: str
) -> Reselection:
    """The noise-aware final choice: the first k configurations of plan (the search's best first), each
    trained on the train split with `seeds` fresh seeds (the trial's own seed left out, so its lucky
    draw does not count twice) and scored on val: the test split is not read. The lowest seed-mean val
    MAE is chosen; a tie keeps the search's order."""
    chosen, start, restored = [], time.perf_counter(), 0.0
    for m in plan.members[:k]:
        began = time.perf_counter()
        train, val = data.split(m.config.image_size, "train"), data.split(m.config.image_size, "val")
        preds, before = [], restored
        for j in range(seeds):
            c = dataclasses.replace(m.config, seed=m.config.seed + 1 + j)  # the file names the seed itself
            key = checkpoint_key(c, data.fingerprint(), train, val)
            shown = f"reselect trial {m.trial} ({m.rank}/{k}), seed {j + 1}/{seeds} ({len(train)} images, on val)"
            r = fit(
                c,
                train,
                val,
                checkpoint=ckpt_dir / f"reselect-trial{m.trial}-seed{c.seed}-{key}.pt",
                eval_each_epoch=False,
                progress=None if quiet else shown,
            )
            preds.append(r.pred_months)
            restored += r.restored_time_s  # epochs an earlier run trained count at their recorded time
        preds_arr = np.array(preds)
        chosen.append(
            Candidate(
                trial=m.trial,
                search_rank=m.rank,
                val_mae_months=m.val_mae_months,
                params=m.params,
                val=mae_estimate(preds_arr, val),
                val_mae_per_seed=np.abs(preds_arr - val.age_months).mean(axis=1).tolist(),
                wall_time_s=round(time.perf_counter() - began + restored - before, 1),
            )
        )
    pick = min(chosen, key=lambda c: (c.val.mean, c.search_rank))
    return Reselection(
        seeds=[plan.members[0].config.seed + 1 + j for j in range(seeds)],
        candidates=chosen,
        chosen=pick.trial,
        single_seed_pick=plan.best_trial,
        wall_time_s=round(time.perf_counter() - start + restored, 1),
        device=device,
    )


def reordered(trials: list[optuna.trial.FrozenTrial], r: Reselection) -> list[optuna.trial.FrozenTrial]:
    """The candidates by seed-mean val MAE (ties in the search's order), then the rest in the search's order."""
    by_trial = {t.number: t for t in trials}
    ranked = sorted(r.candidates, key=lambda c: (c.val.mean, c.search_rank))
    first = [by_trial[c.trial] for c in ranked]
    return first + [t for t in trials if t.number not in {c.trial for c in r.candidates}]
