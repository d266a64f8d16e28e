"""Regression metrics in months: MAE, RMSE, bias, R^2, share within 6/12 months, MAE by sex and age."""

from __future__ import annotations

import numpy as np
from scipy import stats

# Age brackets in months, chosen to follow the usual paediatric stages (infant .. late adolescent).
AGE_BRACKETS_MONTHS = ((0, 24), (24, 72), (72, 120), (120, 168), (168, 300))


def regression_metrics(
    pred_months: np.ndarray, true_months: np.ndarray, male: np.ndarray | None = None
) -> dict[str, float]:
    """All scalar metrics of one set of predictions, keyed by name (units in the name)."""
    pred = np.asarray(pred_months, dtype=np.float64)
    true = np.asarray(true_months, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or len(pred) == 0:
        raise ValueError(f"predictions {pred.shape} and targets {true.shape} must be equal non-empty 1-D")
    err = pred - true
    abs_err = np.abs(err)
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    out = {
        "mae_months": float(abs_err.mean()),
        "rmse_months": float(np.sqrt(np.mean(err**2))),
        "bias_months": float(err.mean()),
        "r2": float(1.0 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "within_6_months_pct": float(100.0 * np.mean(abs_err <= 6.0)),
        "within_12_months_pct": float(100.0 * np.mean(abs_err <= 12.0)),
        "n": float(len(pred)),
    }
    if male is not None:
        male = np.asarray(male, dtype=bool)
        for name, mask in (("male", male), ("female", ~male)):
            out[f"mae_{name}_months"] = float(abs_err[mask].mean()) if mask.any() else float("nan")
    for lo, hi in AGE_BRACKETS_MONTHS:
        mask = (true >= lo) & (true < hi)
        out[f"mae_{lo}_{hi}_months"] = float(abs_err[mask].mean()) if mask.any() else float("nan")
    return out


def _image_bootstrap(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, np.ndarray]:
    """scipy's percentile bootstrap of the mean of per-image values: CI and the resampled means."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap needs a non-empty 1-D array")
    if np.all(values == values[0]):  # no spread: scipy would warn about a degenerate distribution
        return float(values[0]), float(values[0]), np.full(n_boot, values[0])
    res = stats.bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile", rng=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high), res.bootstrap_distribution


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-image values (absolute errors, or paired differences
    of absolute errors): images are resampled with replacement, n_boot times. It sees only the test
    set's size; for recipes trained with several seeds use seed_aware_mae or
    paired_seed_aware_difference, which resample the seeds too."""
    lo, hi, _ = _image_bootstrap(values, n_boot, level, seed)
    return lo, hi


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def _abs_errors(pred_months: np.ndarray, true_months: np.ndarray) -> np.ndarray:
    """(seeds, images) absolute errors; a 1-D prediction is one seed."""
    pred = np.atleast_2d(np.asarray(pred_months, dtype=np.float64))
    true = np.asarray(true_months, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != len(true) or pred.size == 0:
        raise ValueError(f"predictions {pred.shape} must be (seeds, images) for {len(true)} images")
    return np.abs(pred - true)


def _seed_resampled(abs_err: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, images): each draw's seeds resampled with replacement, then averaged per image."""
    s = abs_err.shape[0]
    return abs_err[rng.integers(0, s, size=(n_boot, s))].mean(axis=1)


def _image_means(per_draw: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Mean over each draw's resampled images: per_draw (n_boot, n), images (n_boot, n) indices."""
    return np.take_along_axis(per_draw, images, axis=1).mean(axis=1)


def seed_aware_mae(
    pred_months: np.ndarray, true_months: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """A recipe's test MAE over its seeds: mean and SD over seeds, and a two-stage bootstrap CI that
    resamples the seeds, then the test images. pred_months is (seeds, images).

    Seeds can vary more than test images (the baseline's test MAE ran from 13.2 to 19.0 months over
    three seeds on an earlier demo), so a CI over images alone would claim a precision the recipe does
    not have. With one seed the CI is over images only: the seed spread is unknown."""
    abs_err = _abs_errors(pred_months, true_months)
    per_seed = abs_err.mean(axis=1)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, abs_err.shape[1], size=(n_boot, abs_err.shape[1]))
    lo, hi = _percentiles(_image_means(_seed_resampled(abs_err, rng, n_boot), images), level)
    return {
        "mean": float(per_seed.mean()),
        "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
        "ci_low": lo,
        "ci_high": hi,
        "seeds": len(per_seed),
    }


def paired_seed_aware_difference(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    true_months: np.ndarray,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """MAE(a) - MAE(b) for two recipes scored on the same images, each (seeds, images): negative means
    a is better. Two-stage paired bootstrap: each draw resamples the seeds of each recipe on its own,
    then one set of test images used for both (the pairing). The CI and p_a_not_better (the share of
    draws where a is not better) come from the same draws."""
    err_a, err_b = _abs_errors(pred_a, true_months), _abs_errors(pred_b, true_months)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, err_a.shape[1], size=(n_boot, err_a.shape[1]))
    draws = _image_means(_seed_resampled(err_a, rng, n_boot) - _seed_resampled(err_b, rng, n_boot), images)
    lo, hi = _percentiles(draws, level)
    return {
        "mae_diff_months": float(err_a.mean() - err_b.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "p_a_not_better": float(np.mean(draws >= 0)),
        "seeds_a": err_a.shape[0],
        "seeds_b": err_b.shape[0],
        "n_boot": n_boot,
    }


def paired_mae_difference(abs_err_a: np.ndarray, abs_err_b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """MAE(a) - MAE(b) from per-image absolute errors of one prediction each (for example two seed
    ensembles) on the same images, with a paired bootstrap CI over images: negative means a is better.
    p_a_not_better is the share of the resampled differences that are not below zero."""
    diff = np.asarray(abs_err_a, float) - np.asarray(abs_err_b, float)
    lo, hi, draws = _image_bootstrap(diff, 2000, 0.95, seed)
    return {
        "mae_diff_months": float(diff.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "p_a_not_better": float(np.mean(draws >= 0)),
    }


def verdict(diff: dict[str, float]) -> str:
    """'better', 'worse' or 'no significant difference' for a paired difference (a minus b), from its CI;
    'undetermined' when either side has one seed, since then the CI leaves out the seed spread."""
    if min(diff.get("seeds_a", 2), diff.get("seeds_b", 2)) < 2:
        return "undetermined"
    if diff["ci_high"] < 0:
        return "better"
    if diff["ci_low"] > 0:
        return "worse"
    return "no significant difference"


def summarize_seeds(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and SD over seeds of every metric in regression_metrics' dicts: every column of a table row
    then describes the same predictions (the seeds), never a mix of seed means and seed 0."""
    out: dict[str, dict[str, float]] = {"mean": {}, "sd": {}}
    for key in per_seed[0]:
        values = np.array([m[key] for m in per_seed], dtype=np.float64)
        out["mean"][key] = float(np.mean(values))
        out["sd"][key] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return out


def group_counts(true_months: np.ndarray, male: np.ndarray) -> dict[str, int]:
    """Images per group of regression_metrics' by-group MAEs, keyed like them: what each MAE rests on."""
    true, male = np.asarray(true_months, dtype=np.float64), np.asarray(male, dtype=bool)
    out = {"male": int(male.sum()), "female": int((~male).sum())}
    for lo, hi in AGE_BRACKETS_MONTHS:
        out[f"{lo}_{hi}"] = int(((true >= lo) & (true < hi)).sum())
    return out


def linear_correction(pred_months: np.ndarray, true_months: np.ndarray) -> dict[str, float]:
    """Slope and intercept of true ~ pred by least squares, fitted on held-out (validation) predictions.

    A regression net shrinks its predictions toward the training mean (young children read too old,
    adolescents too young); corrected = slope * pred + intercept undoes the linear part of that, as
    Deeplasia does. Fit it on predictions of images the model did not train on, never on the test set."""
    pred, true = np.asarray(pred_months, np.float64), np.asarray(true_months, np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or len(pred) < 3:
        raise ValueError(f"a linear correction needs 3 or more paired predictions, got {pred.shape} and {true.shape}")
    if np.ptp(pred) == 0:
        raise ValueError("a linear correction needs predictions that vary; these are all equal")
    slope, intercept = np.polyfit(pred, true, 1)
    return {"slope": float(slope), "intercept": float(intercept), "n": int(len(pred))}


def apply_correction(pred_months: np.ndarray, correction: dict[str, float]) -> np.ndarray:
    return correction["slope"] * np.asarray(pred_months, np.float64) + correction["intercept"]


def probability_of_improvement(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    true_months: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """P(A better than B): the probability that a model trained with a new seed of recipe A has a lower
    test MAE than one trained with a new seed of recipe B, each (seeds, images) on the same images.

    The estimate is the Mann-Whitney statistic over every pair of seeds (ties count half), as rliable's
    probability_of_improvement; its CI is a two-stage bootstrap like the paired difference's: each
    draw resamples the seeds of each recipe on its own and one set of test images for both, and
    counts the pairs again. With 3 seeds a side the estimate rests on 9 pairs, so it moves in steps of
    1/18; the CI says how far it can be trusted."""
    err_a, err_b = _abs_errors(pred_a, true_months), _abs_errors(pred_b, true_months)
    if err_a.shape[1] != err_b.shape[1]:
        raise ValueError("both recipes must be scored on the same images")
    p = float(_pairs_better(err_a.mean(axis=1)[None], err_b.mean(axis=1)[None])[0])
    rng = np.random.default_rng(seed)
    n = err_a.shape[1]
    images = rng.integers(0, n, size=(n_boot, n))
    draws = np.empty(n_boot)
    for i in range(n_boot):  # per draw: seeds of each side resampled, the same images for both
        sa = rng.integers(0, err_a.shape[0], size=err_a.shape[0])
        sb = rng.integers(0, err_b.shape[0], size=err_b.shape[0])
        mae_a = err_a[sa][:, images[i]].mean(axis=1)
        mae_b = err_b[sb][:, images[i]].mean(axis=1)
        draws[i] = _pairs_better(mae_a[None], mae_b[None])[0]
    lo, hi = _percentiles(draws, level)
    return {"p": p, "ci_low": lo, "ci_high": hi}


def _pairs_better(mae_a: np.ndarray, mae_b: np.ndarray) -> np.ndarray:
    """Per row, the share of (a, b) seed pairs with a's MAE below b's, ties counted half: (rows, seeds)."""
    a, b = mae_a[:, :, None], mae_b[:, None, :]
    return ((a < b).mean(axis=(1, 2)) + 0.5 * (a == b).mean(axis=(1, 2))).astype(np.float64)


def resolvable_difference(
    pred_a: np.ndarray, pred_b: np.ndarray, true_months: np.ndarray, seeds: int, level: float = 0.95
) -> float:
    """The smallest difference of MAEs a paired comparison with `seeds` seeds a side can call, from
    the spread measured here: the half-width of its CI, z x sqrt(sd_a^2/S + sd_b^2/S + v/n), where
    sd_a and sd_b are the SDs of the per-seed test MAEs (what a new seed changes) and v the variance
    over the n images of the seed-averaged paired difference of absolute errors (what a new test set
    changes). A true difference smaller than this is likely to end as 'no significant difference'.
    Needs 2 or more seeds a side (one seed measures no seed spread)."""
    err_a, err_b = _abs_errors(pred_a, true_months), _abs_errors(pred_b, true_months)
    if min(err_a.shape[0], err_b.shape[0]) < 2:
        raise ValueError("the seed spread needs 2 or more seeds a side")
    if seeds < 1:
        raise ValueError(f"seeds must be 1 or more, got {seeds}")
    sd_a, sd_b = err_a.mean(axis=1).std(ddof=1), err_b.mean(axis=1).std(ddof=1)
    per_image = err_a.mean(axis=0) - err_b.mean(axis=0)
    z = float(stats.norm.ppf(0.5 + level / 2))
    return float(z * np.sqrt((sd_a**2 + sd_b**2) / seeds + per_image.var(ddof=1) / len(per_image)))


def expected_best(values: np.ndarray, n_max: int | None = None) -> dict[str, np.ndarray]:
    """Dodge et al. 2019 ("Show your work"): the expected lowest value, and its SD, among n
    configurations drawn at random with replacement from the ones observed, for n = 1 .. n_max
    (default: as many as observed). With the values sorted from worst to best, v_(1) >= .. >= v_(N),
    P(min of n = v_(i)) = (i/N)^n - ((i-1)/N)^n. It reads the trials as a random search would have
    met them: a tuner whose later trials learn from earlier ones should beat it."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]  # worst first
    if v.ndim != 1 or len(v) == 0 or not np.all(np.isfinite(v)):
        raise ValueError("expected_best needs a non-empty 1-D array of finite values")
    n_total = len(v)
    ns = np.arange(1, (n_max or n_total) + 1)
    i = np.arange(1, n_total + 1)
    probs = (i[None, :] / n_total) ** ns[:, None] - ((i[None, :] - 1) / n_total) ** ns[:, None]
    mean = probs @ v
    var = np.maximum(probs @ v**2 - mean**2, 0.0)
    return {"n": ns, "mean": mean, "sd": np.sqrt(var)}
