"""Parameters of every trial as parallel coordinates, drawn here: each parameter on the scale it was
searched on (a log-searched learning rate on a log axis), categories by name and unquoted, readable
axis names broken over lines, and a colour scale whose worst trial still shows on white. (Optuna's
plot_parallel_coordinate draws every float linearly and quotes categories.)"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.reporting.axes import SCALE, label, linear_ticks, log_ticks, plain, wrap

VAL = "val MAE (months)"


def _choice(value: Any) -> str:
    return {True: "yes", False: "no"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _axis(values: list[Any], distribution: Any | None, log: bool = False) -> tuple[list[float], list[tuple]]:
    """Each value's position on a 0..1 axis, and the axis's ticks as (position, text)."""
    if isinstance(distribution, CategoricalDistribution):
        names = [_choice(c) for c in distribution.choices]
        place = {n: (i / (len(names) - 1) if len(names) > 1 else 0.5) for i, n in enumerate(names)}
        return [place[_choice(v)] for v in values], [(place[n], n) for n in names]
    if isinstance(distribution, FloatDistribution | IntDistribution):
        lo, hi, log = float(distribution.low), float(distribution.high), distribution.log
    else:  # the objective
        lo, hi = min(values), max(values)
    if log:
        f = math.log10
        ticks, _ = log_ticks([lo, hi], most=6)
        ticks = [t for t in ticks if lo <= t <= hi] or [lo, hi]
    else:
        f = float
        ticks = [t for t in linear_ticks(lo, hi) if lo <= t <= hi] or [lo]
    a, b = f(lo), f(hi)
    span = (b - a) or 1.0

    def pos(v: float) -> float:
        return (f(v) - a) / span if b > a else 0.5

    return [pos(float(v)) for v in values], [(pos(t), plain(t)) for t in ticks]


def parallel_figure(study: optuna.Study, title: str) -> Any:
    import plotly.graph_objects as go

    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    names = list(dict.fromkeys(n for t in trials for n in t.distributions))
    trials = [t for t in trials if all(n in t.params for n in names)]  # a line crosses every axis
    values = [float(t.value) for t in trials]
    wide = min(values) > 0 and max(values) / min(values) > 3  # one diverged trial would flatten the rest
    columns = [_axis(values, None, log=wide)]
    for n in names:
        columns.append(_axis([t.params[n] for t in trials], trials[0].distributions[n]))
    colour = np.array(columns[0][0])  # 0 the best, 1 the worst
    fig = go.Figure()
    order = np.argsort(-colour)  # the best drawn last, on top
    for i in order:
        shade = float(1 - colour[i])
        fig.add_scatter(
            x=list(range(len(columns))),
            y=[c[0][i] for c in columns],
            mode="lines",
            line=dict(color=_sample(shade), width=2.5 if shade == 1 else 1.2),
            opacity=0.9 if shade == 1 else 0.6,
            showlegend=False,
            hovertemplate=f"trial {trials[i].number}: val MAE {values[i]:.2f} months<extra></extra>",
        )
    fig.add_scatter(  # the colour bar alone
        x=[None],
        y=[None],
        mode="markers",
        showlegend=False,
        hoverinfo="skip",
        marker=dict(
            colorscale=SCALE,
            reversescale=True,
            cmin=min(values),
            cmax=max(values),
            color=[min(values)],
            colorbar=dict(title=dict(text="val MAE<br>(months)"), thickness=14),
        ),
    )
    for x, (_, ticks) in enumerate(columns):
        for y, text in ticks:
            fig.add_annotation(
                x=x, y=y, text=text, showarrow=False, xanchor="right", xshift=-4, font=dict(size=11, color="#444")
            )
    axis_names = [wrap(VAL + (", log" if wide else ""))] + [wrap(label(n)) for n in names]
    fig.update_layout(template="plotly_white", title=title, margin=dict(l=80, r=30, t=60, b=90))
    fig.update_xaxes(
        tickvals=list(range(len(columns))), ticktext=axis_names, range=[-0.6, len(columns) - 0.8], showgrid=True
    )
    fig.update_yaxes(visible=False, range=[-0.05, 1.05])
    return fig


def _sample(shade: float) -> str:
    """The colour at `shade` (0 the worst trial, 1 the best) of SCALE."""
    from plotly.colors import sample_colorscale

    return sample_colorscale(SCALE, [shade])[0]
