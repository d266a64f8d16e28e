"""What baseline and retrain produce, as typed data with one home: the study itself.

Each result is a dataclass serialized once (to_json / from_json) and stored as one user attr of the
study, beside the trials it is measured against. A user attr, not an Optuna artifact: it lives in the
same database as the study (SQLite or PostgreSQL alike), so every machine and every directory that
reaches the storage reads the same object, with no file store to share or keep in step; the largest
(retrain with its per-image predictions) is tens of kilobytes. status, report, the dashboard note and
the figures all read these objects; the files in results/<study>/ are copies made from them.

A stored result that does not read as this version's (a field missing, one unknown) is one line
naming the command that makes it again, never a guess from which keys exist.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from boneage_core.errors import BoneAgeError
from search.storage.writes import finite, replace_files

BASELINE_ATTR = "result:baseline"
RETRAIN_ATTR = "result:retrain"


@dataclass(frozen=True)
class MaeEstimate:
    """A recipe's test or val MAE over its seeds: mean, SD over seeds, the two-stage bootstrap CI."""

    mean: float
    sd: float | None
    ci_low: float
    ci_high: float
    seeds: int


@dataclass(frozen=True)
class Difference:
    """A minus B on the same images (boneage_core.metrics): the difference of MAEs, its 95% CI, the
    share of resamples where A is not better."""

    mae_diff_months: float
    ci_low: float
    ci_high: float
    p_a_not_better: float


@dataclass(frozen=True)
class Improvement:
    """P(improvement): the probability that a new seed of A has a lower test MAE than a new seed of B,
    over every pair of seeds, with its two-stage bootstrap CI (boneage_core.metrics)."""

    p: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison(Difference):
    """A paired, seed-aware comparison, its verdict in one word, P(improvement), the smallest difference
    a number of seeds resolves (None with one seed a side), and the two seed ensembles' difference (a
    CI over images only), labelled apart."""

    seeds_a: int
    seeds_b: int
    n_boot: int
    verdict: str  # better | worse | no significant difference | undetermined
    ensembles: Difference
    improvement: Improvement
    resolvable_months: dict[str, float] | None  # {seeds a side, or 'unlimited': the CI's half-width}, as measured


@dataclass(frozen=True)
class RecipeScore:
    """One recipe's final test: per-seed predictions for every test image, the MAE with its CI, every
    other metric as mean and SD over seeds, and the seed ensemble as a separate model."""

    mae: MaeEstimate
    mae_per_seed: list[float]
    metrics_mean: dict[str, float | None]
    metrics_sd: dict[str, float | None]
    metrics_per_seed: list[dict[str, float | None]]
    seed_ensemble: dict[str, float | None]
    pred_months: list[list[float]]  # (seeds, test images), in the order of RetrainResult.test_ids
    config: dict[str, Any] | None = None  # a trained recipe's config
    trials: list[int] | None = None  # a recipe built from trials (an ensemble, a correction)
    tta_flip: MaeEstimate | None = None
    without_bn_reestimation: MaeEstimate | None = None  # the baseline scored as the original project did
    # seconds to train and score it: this command's, plus the recorded training time of epochs read
    # back from checkpoints (so a rerun that trains nothing still says what the models cost)
    wall_time_s: float | None = None


@dataclass(frozen=True)
class Member:
    """One of the top-k configurations as retrained."""

    rank: int  # 1 is the best trial
    trial: int
    val_mae_months: float
    params: dict[str, Any]
    config: dict[str, Any]
    mae: MaeEstimate
    mae_per_seed: list[float]
    wall_time_s: float
    pred_months: list[list[float]]  # (seeds, test images)

    @property
    def name(self) -> str:
        """Its name in files: 'best' for the best trial, then 'top2', 'top3', ..."""
        return "best" if self.rank == 1 else f"top{self.rank}"


@dataclass(frozen=True)
class Correction:
    """corrected = slope x predicted + intercept, fitted on the val predictions of these trials."""

    slope: float
    intercept: float
    n: int
    trials: list[int]


@dataclass(frozen=True)
class Candidate:
    """One configuration of the noise-aware final choice: its single-seed val MAE from the search and
    the same configuration trained on the train split with fresh seeds, scored on val."""

    trial: int
    search_rank: int  # its place by the search's single-seed val MAE, 1 the study's best trial
    val_mae_months: float  # the search's, one seed
    params: dict[str, Any]
    val: MaeEstimate  # over the fresh seeds: mean, SD, two-stage CI (seeds, then val images)
    val_mae_per_seed: list[float]
    wall_time_s: float


@dataclass(frozen=True)
class Reselection:
    """retrain --reselect: the K best distinct configurations, each trained on train with S fresh
    seeds and scored on val only; the lowest seed-mean val MAE goes to the final test."""

    seeds: list[int]  # the seeds trained (the trials' own seed left out)
    candidates: list[Candidate]  # in the search's order
    chosen: int  # the trial carried to the final test
    single_seed_pick: int  # the study's best trial
    wall_time_s: float
    device: str

    @property
    def changed(self) -> bool:
        return self.chosen != self.single_seed_pick


@dataclass(frozen=True)
class RetrainResult:
    """What retrain measured: every recipe on the same test images, K seeds each, and every comparison."""

    study: str
    best_trial: int
    n_trainval: int
    seeds: int
    tta: bool
    top_k: int
    test_ids: list[str]
    test_age_months: list[float]
    test_male: list[bool]
    group_n: dict[str, int]
    data_fingerprint: str
    recipes: dict[str, RecipeScore]  # best, best_corrected, ensemble, ensemble_corrected, baseline: as run
    members: list[Member]
    best_minus_baseline: Comparison
    comparisons: dict[str, Comparison]  # "a_minus_b"
    overrides: dict[str, dict[str, list[Any]]]  # {recipe: {field: [recorded, used]}} from retrain --set
    baseline_modified: dict[str, list[Any]]  # {field: [the study's, used]}: retrain --set baseline.*
    bias_correction: dict[str, Correction]
    command: dict[str, Any]
    best_minus_baseline_tta_flip: Comparison | None = None
    reselection: Reselection | None = None

    @property
    def searched_best(self) -> int:
        """The study's best trial when this retrain ran (the single-seed pick, whichever went to test)."""
        return self.reselection.single_seed_pick if self.reselection else self.best_trial

    @property
    def n_test(self) -> int:
        return len(self.test_ids)


@dataclass(frozen=True)
class BaselineResult:
    """The baseline on val with K seeds: the yardstick for the search's trials."""

    val_mae_months: float  # the mean over seeds
    val_mae_per_seed: list[float]
    val_mae_sd: float | None
    mean_predictor_val_mae_months: float
    val_metrics_per_seed: list[dict[str, float | None]]
    histories: list[list[dict[str, Any]]]  # per seed, per epoch
    config: dict[str, Any]
    wall_time_s: float
    command: dict[str, Any] = field(default_factory=dict)


class ResultFormatError(BoneAgeError):
    pass


def to_json(result: Any) -> dict[str, Any]:
    """The result as JSON-safe data (a NaN, the metric of an empty group, as None)."""
    return finite(dataclasses.asdict(result))


def _build(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _build(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ResultFormatError(f"{where} is not a record")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        required = {f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING}
        required -= {f.name for f in dataclasses.fields(kind) if f.default_factory is not dataclasses.MISSING}
        if unknown := set(value) - names:
            raise ResultFormatError(f"{where} has an unknown field '{sorted(unknown)[0]}'")
        if missing := required - set(value):
            raise ResultFormatError(f"{where} lacks the field '{sorted(missing)[0]}'")
        return kind(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(kind) or (Any,)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(kind) or (str, Any)
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, dict):
        raise ResultFormatError(f"{where} is not a {origin.__name__}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ResultFormatError(f"{where} is not a whole number")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
        raise ResultFormatError(f"{where} is not a finite number")
    if kind in (str, bool) and not isinstance(value, kind):
        raise ResultFormatError(f"{where} is not a {kind.__name__}")
    return value


def from_json(cls: type, data: Any) -> Any:
    return _build(cls, data, cls.__name__)


def store(study: optuna.Study, result: BaselineResult | RetrainResult) -> None:
    """The result in the study, as its one stored copy."""
    attr = BASELINE_ATTR if isinstance(result, BaselineResult) else RETRAIN_ATTR
    study.set_user_attr(attr, to_json(result))


def _load(study: optuna.Study, attr: str, cls: type, rerun: str) -> Any:
    data = study.user_attrs.get(attr)
    if data is None:
        return None
    try:
        return from_json(cls, data)
    except ResultFormatError as exc:
        what = "baseline" if cls is BaselineResult else "retrain"
        raise BoneAgeError(
            f"study '{study.study_name}' holds a {what} result this version cannot read ({exc}): rerun `{rerun}`"
        ) from None


def load_baseline(study: optuna.Study, rerun: str = "python -m search baseline") -> BaselineResult | None:
    """The stored baseline result, None before `baseline`; rerun: the command to name if unreadable."""
    return _load(study, BASELINE_ATTR, BaselineResult, rerun)


def load_retrain(study: optuna.Study, rerun: str = "python -m search retrain") -> RetrainResult | None:
    """The stored final test, None before `retrain`; rerun: the command to name if unreadable."""
    return _load(study, RETRAIN_ATTR, RetrainResult, rerun)


def to_text(result: Any) -> str:
    return json.dumps(to_json(result), indent=2) + "\n"


def final_test_files(out_dir: Path) -> list[Path]:
    """The copies of a final test in out_dir: retrain.json and the prediction files."""
    found = [out_dir / "retrain.json"] if (out_dir / "retrain.json").is_file() else []
    return found + sorted(out_dir.glob("predictions_*_seed*.csv"))


def write_files(result: RetrainResult, out_dir: Path) -> list[Path]:
    """Copies of a stored final test in out_dir for other tools: retrain.json and a prediction file per
    recipe (and top-k member) and seed, the files written. The new set is written whole before any
    replaces its old copy, so a full disk or Ctrl-C midway loses nothing; an older prediction file the
    new set does not replace (a recipe or seed it lacks) is removed afterwards."""
    import pandas as pd

    files = {"retrain.json": to_text(result).encode()}
    test = pd.DataFrame({"id": result.test_ids, "age_months": result.test_age_months, "male": result.test_male})
    test = test.round({"age_months": 4})  # a label as written, whatever float it was read into
    preds = {m.name: m.pred_months for m in result.members} | {n: r.pred_months for n, r in result.recipes.items()}
    for name, pred in preds.items():
        for k, p in enumerate(pred):
            files[f"predictions_{name}_seed{k}.csv"] = test.assign(pred_months=p).to_csv(index=False).encode()
    written = replace_files(out_dir, files)
    for stale in set(final_test_files(out_dir)) - set(written):
        stale.unlink()
    return written
