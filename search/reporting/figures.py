"""The report's figures, each with a title and a one-line caption saying how to read it.

Optuna's own plots are used for what they draw (history, pruning curves, importances, parallel
coordinates, slices) and given what they lack: units, readable parameter names, log scales where MAE
spans a wide range, integer epochs, the baseline as the band of its seeds. One colour-blind-safe
palette (Okabe-Ito) everywhere: blue for the best recipe, orange for the baseline, grey for the
other trials.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from boneage_core.metrics import AGE_BRACKETS_MONTHS
from search.reporting.axes import SCALE, label, linear_ticks, log_ticks, signed, wrap
from search.reporting.document import plural
from search.reporting.parallel import parallel_figure
from search.storage.results import BaselineResult, RetrainResult

# Every recipe retrain can score, in the order every table and figure lists them, and its colour
# (Okabe-Ito, safe for colour-blind readers): blue the best, orange the baseline.
NAMES = {
    "best": "best",
    "best_corrected": "bias-corrected best",
    "ensemble": "top-k ensemble",
    "ensemble_corrected": "bias-corrected top-k ensemble",
    "baseline": "baseline",
}
COLOURS = {
    "best": "#0072B2",
    "best_corrected": "#56B4E9",
    "ensemble": "#009E73",
    "ensemble_corrected": "#CC79A7",
    "baseline": "#E69F00",
    "trials": "#999999",
    "accent": "#56B4E9",
}
BAND = "rgba(230, 159, 0, 0.25)"  # the baseline's orange, see-through
GROUPS = [(f"mae_{lo}_{hi}_months", f"{lo}_{hi}", f"{lo}-{hi} mo") for lo, hi in AGE_BRACKETS_MONTHS] + [
    ("mae_male_months", "male", "male"),
    ("mae_female_months", "female", "female"),
]
VAL = "val MAE (months)"

# name: (title, caption); the order is the page's
FIGURES = {
    "optimization_history": (
        "Search history",
        "Each complete trial's val MAE (one seed each, grey) and the best so far (blue), on a log scale so "
        "one diverged trial does not flatten the rest; the orange band is the baseline's range over its "
        "seeds, the dashed line their mean. A trial below the band did better than every seed of it.",
    ),
    "intermediate_values": (
        "Pruning curves",
        "Val MAE after each epoch of every trial (grey; pruned trials stop early), the best trial in blue, "
        "and the baseline's per-epoch range over its seeds (orange band). Log scale.",
    ),
    "expected_best": (
        "Best val MAE against the budget",
        "The best val MAE found against epochs trained (left) and wall time (right): blue, this search in "
        "its own order; dashed grey, the expected best of n of the same trials drawn at random with "
        "replacement, ± 1 SD (Dodge et al. 2019): what a random search over them would expect. Blue below "
        "grey: the sampler found good trials sooner than chance. A pruned trial counts at the MAE it had "
        "when stopped. Log scale.",
    ),
    "param_importances": (
        "Which parameters mattered",
        "Optuna's fANOVA importance: the share of the variation in val MAE across complete trials that "
        "each parameter explains. A few trials make this rough.",
    ),
    "parallel_coordinate": (
        "Parameters of every trial",
        "One line per complete trial across its parameter values, each on the scale it was searched on (a "
        "log-searched learning rate on a log axis), coloured by val MAE (darker is lower).",
    ),
    "slice": (
        "Val MAE against each parameter",
        "Each complete trial at its value of one parameter; colour says how late in the search it ran.",
    ),
    "baseline_vs_best": (
        "Final test MAE",
        "Each recipe retrained on train+val: the mean test MAE over its seeds, with the 95% CI over seeds "
        "and test images. Overlapping bars are not the verdict: the paired difference above is.",
    ),
    "predicted_vs_true": (
        "Predicted against true bone age",
        "Each test image, predicted by the average of a recipe's seeds; the dashed line is perfect agreement.",
    ),
    "bland_altman": (
        "Agreement (Bland-Altman)",
        "Error against the mean of predicted and true age, per test image; the lines are each recipe's "
        "bias (solid) and its 95% limits of agreement (dotted), their values in the legend.",
    ),
    "mae_by_group": (
        "Test MAE by age and sex",
        "Mean over seeds, error bars one SD over seeds; n is the number of test images in the group, so a "
        "bar over few images says little.",
    ),
}


def style(fig, title: str, x_title: str | None = None, y_title: str | None = None):
    title = wrap(title, 52)  # two lines rather than one under the mode bar at the right of an 800 px page
    top = 60 if "<br>" not in title else 84
    fig.update_layout(template="plotly_white", title=title, margin=dict(l=80, r=30, t=top, b=60))
    if x_title is not None:
        fig.update_xaxes(title=x_title)
    if y_title is not None:
        fig.update_yaxes(title=y_title)
    return fig


def log_y(fig) -> None:
    """A log MAE axis with ticks at 1, 2, 5 x 10^k written out: plotly's own show '100' and tiny
    2..9 digits on a wide range, so a '5' at the top means 500."""
    values = [v for t in fig.data if t.y is not None for v in t.y if isinstance(v, int | float)]
    vals, text = log_ticks(values)
    fig.update_yaxes(type="log", tickvals=vals, ticktext=text)


def _seed_band(fig, x: list[float], low: list[float], high: list[float], label: str) -> None:
    """The baseline's range over its seeds as a band: traces, not shapes (shapes on a log axis take
    log10 units, and renderers disagree on them)."""
    edge = dict(mode="lines", line=dict(width=0, color=COLOURS["baseline"]), hoverinfo="skip")
    fig.add_scatter(x=x, y=low, showlegend=False, **edge)
    fig.add_scatter(x=x, y=high, fill="tonexty", fillcolor=BAND, name=label, **edge)


def history_figure(study: optuna.Study, base: BaselineResult | None) -> Any:
    import optuna.visualization as vis

    fig = vis.plot_optimization_history(study, target_name=VAL)
    for trace in fig.data:  # Optuna's "Objective Value" markers and "Best Value" line
        if trace.mode == "markers":
            trace.update(name="trial (one seed)", marker=dict(color=COLOURS["trials"], size=7))
        else:
            trace.update(name="best so far", line=dict(color=COLOURS["best"], width=2))
    style(fig, FIGURES["optimization_history"][0], "trial", "val MAE (months, log scale)")
    if base:
        per_seed = base.val_mae_per_seed
        x = [-0.5, len(study.get_trials(deepcopy=False)) - 0.5]
        label = f"baseline: range of {plural(len(per_seed), 'seed')}"
        _seed_band(fig, x, [min(per_seed)] * 2, [max(per_seed)] * 2, label)
        fig.add_scatter(
            x=x,
            y=[base.val_mae_months] * 2,
            mode="lines",
            line=dict(dash="dash", color=COLOURS["baseline"]),
            name=f"baseline: mean {base.val_mae_months:.2f}",
        )
    log_y(fig)
    return fig


def pruning_figure(study: optuna.Study, base: BaselineResult | None) -> Any:
    """Drawn here rather than by plot_intermediate_values, which colours every trial differently and
    has no place for the baseline."""
    import plotly.graph_objects as go

    fig = go.Figure()
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    best = study.best_trial.number if any(t.state == TrialState.COMPLETE for t in trials) else None
    first_other = next((t.number for t in trials if t.number != best), None)
    for t in trials:
        steps = sorted(t.intermediate_values)
        is_best = t.number == best
        fig.add_scatter(
            x=steps,
            y=[t.intermediate_values[s] for s in steps],
            mode="lines+markers",
            line=dict(color=COLOURS["best" if is_best else "trials"], width=3 if is_best else 1),
            marker=dict(size=4),
            opacity=1 if is_best else 0.6,
            name=f"best trial ({t.number})" if is_best else "trials (pruned ones end early)",
            legendgroup="best" if is_best else "trials",
            showlegend=is_best or t.number == first_other,  # one legend entry for all the others
            hovertemplate=f"trial {t.number}, epoch %{{x}}: %{{y:.2f}} months<extra></extra>",
        )
    histories = base.histories if base else []
    if histories:
        epochs = min(len(h) for h in histories)
        per_epoch = np.array([[h[e]["val_mae_months"] for e in range(epochs)] for h in histories])
        x = list(range(1, epochs + 1))
        label = f"baseline: range of {plural(len(histories), 'seed')}"
        _seed_band(fig, x, list(per_epoch.min(0)), list(per_epoch.max(0)), label)
    style(fig, FIGURES["intermediate_values"][0], "epoch", "val MAE (months, log scale)")
    fig.update_xaxes(dtick=1, tick0=1)
    log_y(fig)
    return fig


def _category(value) -> str:
    return {"True": "yes", "False": "no"}.get(str(value), str(value).strip("'"))


def _readable_slices(fig) -> None:
    """Optuna's slice plot with words for names, log axes ticked 1, 2, 5 x 10^k and written out
    (its own put tiny 2..9 digits beside a '10^-2', which overlap in a narrow subplot), at most four
    ticks on a linear axis, and a colour scale whose first trials show on white."""
    for axis in fig.layout:
        if not axis.startswith("xaxis"):
            continue
        ax = fig.layout[axis]
        if ax.title is not None and ax.title.text is not None:
            ax.title.text = wrap(label(ax.title.text), 18)
        suffix = axis[len("xaxis") :]
        mine = [t for t in fig.data if (t.xaxis or "x") == f"x{suffix}"]
        xs = [v for t in mine for v in (t.x or []) if isinstance(v, float | int)]
        if ax.type == "category":  # Optuna writes categories quoted ('mse') and booleans as True/False
            for t in mine:
                t.x = tuple(_category(v) for v in t.x)
            if ax.categoryarray is not None:
                ax.categoryarray = tuple(_category(v) for v in ax.categoryarray)
            continue
        if not xs:
            continue
        lo, hi = min(xs), max(xs)  # ticks inside the data only: one at a subplot's edge meets its neighbour's
        if ax.type == "log":
            vals, text = log_ticks(xs, most=3, inside=True)
            ax.update(tickvals=vals, ticktext=text)
        else:
            ax.update(tickvals=[v for v in linear_ticks(lo, hi, 3) if lo <= v <= hi], tickformat=".3g")
    for trace in fig.data:
        if trace.marker is not None and trace.marker.colorscale is not None:
            trace.marker.colorscale = SCALE


def search_figures(study: optuna.Study, base: BaselineResult | None) -> dict[str, Any]:
    import optuna.visualization as vis

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return {}
    figs = {"optimization_history": history_figure(study, base), "intermediate_values": pruning_figure(study, base)}
    if len(complete) < 2 or not study.best_trial.params:
        return figs
    imp = vis.plot_param_importances(study, target_name=VAL)
    imp.update_traces(marker_color=COLOURS["accent"], textposition="outside", cliponaxis=False)
    imp.data[0].y = tuple(label(p) for p in imp.data[0].y)
    style(imp, FIGURES["param_importances"][0], "importance (share of val MAE variation)", "")
    imp.update_yaxes(automargin=True, ticksuffix="  ")
    par = parallel_figure(study, FIGURES["parallel_coordinate"][0])
    sl = vis.plot_slice(study, target_name=VAL)
    sl.layout.width = None  # Optuna sets 300 px per parameter: five overflow the page; the page's width instead
    style(sl, FIGURES["slice"][0])
    _readable_slices(sl)
    return {**figs, "param_importances": imp, "parallel_coordinate": par, "slice": sl}


def recipe_name(name: str, retrained: RetrainResult) -> str:
    """'best', 'bias-corrected top-3 ensemble', 'baseline' ('modified baseline' where retrain --set
    baseline.* changed it): a recipe of a retrain, as every view names it."""
    if name == "baseline" and retrained.baseline_modified:
        return "modified baseline"
    return NAMES[name].replace("top-k", f"top-{retrained.top_k}")


def test_figures(retrained: RetrainResult) -> dict[str, Any]:
    """The final test's figures, from the stored result's per-image predictions."""
    true = np.array(retrained.test_age_months)
    seeds = retrained.seeds
    which = f"average of {seeds} seeds" if seeds > 1 else "one seed"
    # per image, the models themselves: a bias correction moves each along one line (the tables have it)
    models = {
        recipe_name(n, retrained): (n, np.array(r.pred_months))
        for n, r in retrained.recipes.items()
        if not n.endswith("_corrected")
    }
    return {
        "baseline_vs_best": _ci_figure(retrained),
        "predicted_vs_true": _scatter_figure(models, true, which),
        "bland_altman": _bland_altman_figure(models, true, which),
        "mae_by_group": _group_figure(retrained),
    }


def _scatter_figure(models: dict[str, tuple[str, np.ndarray]], true: np.ndarray, which: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for shown, (name, p) in models.items():
        fig.add_scatter(x=true, y=p.mean(axis=0), mode="markers", name=shown, marker_color=COLOURS[name])
    hi = float(true.max()) * 1.05
    fig.add_scatter(x=[0, hi], y=[0, hi], mode="lines", name="perfect agreement", line=dict(color="gray", dash="dash"))
    return style(
        fig,
        f"{FIGURES['predicted_vs_true'][0]} (test, {len(true)} images, {which})",
        "true bone age (months)",
        "predicted bone age (months)",
    )


def _bland_altman_figure(models: dict[str, tuple[str, np.ndarray]], true: np.ndarray, which: str) -> Any:
    """Each recipe's bias and 95% limits of agreement as lines whose values the legend gives (text
    labels on the plot sat on the points and on each other)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    means = {shown: (p.mean(axis=0) + true) / 2 for shown, (_, p) in models.items()}
    x0, x1 = min(float(m.min()) for m in means.values()), max(float(m.max()) for m in means.values())
    for shown, (name, p) in models.items():
        diff = p.mean(axis=0) - true
        colour = COLOURS[name]
        fig.add_scatter(x=means[shown], y=diff, mode="markers", name=shown, marker_color=colour, legendgroup=name)
        bias, half = float(diff.mean()), 1.96 * float(diff.std(ddof=1))
        fig.add_scatter(
            x=[x0, x1], y=[bias, bias], mode="lines", line=dict(color=colour), legendgroup=name,
            name=f"{shown}: bias {signed(bias)}",
        )  # fmt: skip
        fig.add_scatter(
            x=[x0, x1, None, x0, x1], y=[bias - half, bias - half, None, bias + half, bias + half], mode="lines",
            line=dict(color=colour, dash="dot"), legendgroup=name,
            name=f"{shown}: 95% limits {signed(bias - half)} to {signed(bias + half)}",
        )  # fmt: skip
    return style(
        fig,
        f"{FIGURES['bland_altman'][0]} (test, {which})",
        "mean of predicted and true (months)",
        "predicted - true (months)",
    )


def _group_figure(retrained: RetrainResult) -> Any:
    import plotly.graph_objects as go

    n = retrained.group_n
    # three short lines (ages, unit, count): seven groups side by side fit 800 px without touching
    x = [f"{g.removesuffix(' mo')}<br>{'months' if g.endswith(' mo') else ''}<br>n={n[key]}" for _, key, g in GROUPS]
    fig = go.Figure()
    for name, r in retrained.recipes.items():
        fig.add_bar(
            x=x,
            y=[r.metrics_mean[m] for m, _, _ in GROUPS],
            name=recipe_name(name, retrained),
            marker_color=COLOURS[name],
            error_y=dict(type="data", array=[r.metrics_sd[m] or 0 for m, _, _ in GROUPS]),
        )
    fig.update_layout(barmode="group")
    title = f"{FIGURES['mae_by_group'][0]} (mean over {plural(retrained.seeds, 'seed')}, ± SD)"
    return style(fig, title, "", "test MAE (months)")


def _ci_figure(retrained: RetrainResult) -> Any:
    import plotly.graph_objects as go

    r = retrained.recipes
    names = list(r)
    err = dict(
        type="data",
        symmetric=False,
        array=[r[n].mae.ci_high - r[n].mae.mean for n in names],
        arrayminus=[r[n].mae.mean - r[n].mae.ci_low for n in names],
    )
    fig = go.Figure(
        go.Bar(
            x=[wrap(f"{recipe_name(n, retrained)}: {r[n].mae.mean:.2f} months", 16) for n in names],  # value shown
            y=[r[n].mae.mean for n in names],
            marker_color=[COLOURS[n] for n in names],
            error_y=err,
        )
    )
    title = f"{FIGURES['baseline_vs_best'][0]}: mean of {plural(retrained.seeds, 'seed')}, 95% CI over seeds and images"
    return style(fig, title, "", "test MAE (months)")
