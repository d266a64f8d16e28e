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
