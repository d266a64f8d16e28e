"""The best val MAE a study reaches against the budget spent (Dodge et al. 2019, "Show your work"): the
expected best after n configurations drawn at random (with replacement) from the study's trials,
with its spread, beside the best the search really held after each trial, both against epochs
trained and wall time.

A finished trial counts at its val MAE: a complete one at its final value, a pruned one at the value
it had when stopped (what the search knew of it). The expected curve is what a random search would
expect to find, drawing n of these configurations at random; a tuner whose later trials learn from
the earlier ones should lie below it. Drawn with replacement, it stays above the study's best even
at n = N (the same configuration can be drawn twice), as Dodge's estimator does. For the spread of
a tuner over its own sampler seeds, see results/bench/search-efficiency.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from boneage_core.metrics import expected_best
from search.reporting.figures import COLOURS, FIGURES, log_y, style
from search.storage.results import BaselineResult

# trials after which the report states the expected best in words
STATED_AT = (10, 25, 50, 100)


def budget_curve(study: optuna.Study) -> dict[str, Any] | None:
    """The finished trials' values, epochs and wall times in trial order, Dodge's expected best for
    n = 1 .. N with its SD, and the best the search held after each trial; None under 2 trials."""
    finished = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE and t.value is not None:
            value = t.value
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        else:
            continue
        if np.isfinite(value):
            finished.append((t.number, float(value), int(t.user_attrs.get("epochs_run", 0)), t.user_attrs))
    if len(finished) < 2:
        return None
    values = np.array([v for _, v, _, _ in finished])
    epochs = np.array([e for _, _, e, _ in finished], dtype=float)
    wall = np.array([float(a.get("wall_time_s", 0.0)) for *_, a in finished])
    curve = expected_best(values)
    return {
        "trials": len(finished),
        "epochs_per_trial": float(epochs.mean()),
        "wall_s_per_trial": float(wall.mean()),
        "expected_best": [round(float(v), 3) for v in curve["mean"]],
        "expected_best_sd": [round(float(v), 3) for v in curve["sd"]],
        "observed_best": [round(float(v), 3) for v in np.minimum.accumulate(values)],
        "observed_epochs": epochs.cumsum().tolist(),
        "observed_wall_s": [round(float(w), 1) for w in wall.cumsum()],
    }


def expected_best_words(c: dict[str, Any]) -> str:
    """The expected best in a sentence, at a few budgets, against what the search's own order held."""
    at = [n for n in STATED_AT if n < c["trials"]] + [c["trials"]]
    parts = [
        f"{n} trials ({n * c['epochs_per_trial']:.0f} epochs) {c['expected_best'][n - 1]:.2f} ± "
        f"{c['expected_best_sd'][n - 1]:.2f}"
        for n in at
    ]
    own = [f"{c['observed_best'][n - 1]:.2f} after {n}" for n in at]
    return (
        "Expected best val MAE against the budget (Dodge et al. 2019): the best of n of these trials drawn at "
        "random with replacement, as a random search over them would find it (mean ± SD; a pruned trial counts at "
        f"the MAE it had when stopped): {'; '.join(parts)} months. The search, in its own order, held "
        f"{', '.join(own)}."
    )


def budget_figure(c: dict[str, Any], base: BaselineResult | None) -> Any:
    """Two panels sharing the MAE axis: against epochs trained, and against wall time."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    n = np.arange(1, c["trials"] + 1)
    mean, sd = np.array(c["expected_best"]), np.array(c["expected_best_sd"])
    low = np.maximum(mean - sd, min(c["observed_best"]) * 0.5)  # a log axis cannot show a band below zero
    for col, (per_trial, observed, unit) in enumerate(
        ((c["epochs_per_trial"], c["observed_epochs"], "epochs"), (c["wall_s_per_trial"] / 60, None, "min")), start=1
    ):
        x = (n * per_trial).tolist()
        first = col == 1
        edge = dict(mode="lines", line=dict(width=0, color=COLOURS["trials"]), hoverinfo="skip", legendgroup="band")
        fig.add_scatter(x=x, y=low.tolist(), showlegend=False, row=1, col=col, **edge)
        fig.add_scatter(
            x=x, y=(mean + sd).tolist(), fill="tonexty", fillcolor="rgba(153, 153, 153, 0.3)",
            name="random draws: ± 1 SD", showlegend=first, row=1, col=col, **edge,
        )  # fmt: skip
        fig.add_scatter(
            x=x, y=mean.tolist(), mode="lines", line=dict(color=COLOURS["trials"], width=2, dash="dash"),
            name="random draws: expected best", legendgroup="expected", showlegend=first, row=1, col=col,
            hovertemplate=f"%{{x:.0f}} {unit}: %{{y:.2f}} months<extra></extra>",
        )  # fmt: skip
        xs = observed if observed is not None else [w / 60 for w in c["observed_wall_s"]]
        fig.add_scatter(
            x=xs, y=c["observed_best"], mode="lines", line=dict(color=COLOURS["best"], width=2, shape="hv"),
            name="this search's order: best so far", legendgroup="observed", showlegend=first, row=1, col=col,
            hovertemplate=f"%{{x:.0f}} {unit}: %{{y:.2f}} months<extra></extra>",
        )  # fmt: skip
        if base:
            fig.add_scatter(
                x=[0, max(x[-1], xs[-1])], y=[base.val_mae_months] * 2, mode="lines",
                line=dict(color=COLOURS["baseline"], dash="dot"), name=f"baseline: mean {base.val_mae_months:.2f}",
                legendgroup="baseline", showlegend=first, row=1, col=col,
            )  # fmt: skip
    style(fig, FIGURES["expected_best"][0], None, None)
    fig.update_xaxes(title_text="epochs trained", row=1, col=1, rangemode="tozero")
    fig.update_xaxes(title_text="wall time (min)", row=1, col=2, rangemode="tozero")
    fig.update_yaxes(title_text="best val MAE (months, log scale)", row=1, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    log_y(fig)
    return fig
