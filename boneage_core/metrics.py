"""Regression metrics in months: MAE, RMSE, bias, R^2, share within 6/12 months, MAE by sex and age."""

from __future__ import annotations

import numpy as np

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


def mae_months(pred_months: np.ndarray, true_months: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred_months, float) - np.asarray(true_months, float))))


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-image values (absolute errors, or paired differences
    of absolute errors): images are resampled with replacement, n_boot times."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap needs a non-empty 1-D array")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_mae_difference(abs_err_a: np.ndarray, abs_err_b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """MAE(a) - MAE(b) from per-image absolute errors on the same images, with a paired bootstrap CI:
    negative means a is better. p_a_not_better is the share of resamples in which a is not better."""
    diff = np.asarray(abs_err_a, float) - np.asarray(abs_err_b, float)
    lo, hi = bootstrap_ci(diff, seed=seed)
    rng = np.random.default_rng(seed + 1)
    means = diff[rng.integers(0, len(diff), size=(2000, len(diff)))].mean(axis=1)
    return {
        "mae_diff_months": float(diff.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "p_a_not_better": float(np.mean(means >= 0)),
    }
