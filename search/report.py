"""Views of a study: the status text, and results/<study>/ with tables and plotly figures.

Figures are HTML sharing one plotly.min.js beside them (4.8 MB embedded in each would be wasteful), so
index.html opens offline. PNG copies are written when kaleido and a Chromium are available.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from boneage_core.metrics import AGE_BRACKETS_MONTHS


def status_text(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines = [
        f"study {study.study_name}: {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in by_state.items() if n)
    ]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        lines.append(f"best: trial {best.number}, val MAE {best.value:.2f} months ({params})")
    else:
        lines.append("best: no completed trial yet")
    base = study.user_attrs.get("baseline")
    if base:
        per_seed = base.get("val_mae_per_seed", [base["val_mae_months"]])
        lines.append(
            f"baseline (seed recipe): val MAE {base['val_mae_months']:.2f} months "
            f"(mean of {len(per_seed)} seed(s): {format_seeds(per_seed)})"
        )
        if "mean_predictor_val_mae_months" in base:
            lines.append(f"mean predictor: val MAE {base['mean_predictor_val_mae_months']:.2f} months")
        if done:
            lines.append(f"best vs baseline: {100 * (1 - study.best_value / base['val_mae_months']):.1f}% lower MAE")
    else:
        lines.append("baseline: not run yet (python -m search baseline)")
    spent = sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials)
    epochs = sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)
    lines.append(f"time spent training: {spent / 60:.1f} min over {epochs} epochs")
    return "\n".join(lines)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "val_mae_months": t.value,
                **{f"param_{k}": v for k, v in t.params.items()},
                "epochs_run": t.user_attrs.get("epochs_run"),
                "wall_time_s": t.user_attrs.get("wall_time_s"),
                "fail_reason": t.user_attrs.get("fail_reason", ""),
            }
        )
    return pd.DataFrame(rows)


def _study_figures(study: optuna.Study) -> dict[str, Any]:
    import optuna.visualization as vis

    figs: dict[str, Any] = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return figs
    history = vis.plot_optimization_history(study, target_name="val MAE (months)")
    base = study.user_attrs.get("baseline")
    if base:
        history.add_hline(
            y=base["val_mae_months"],
            line_dash="dash",
            line_color="firebrick",
            annotation_text=f"seed baseline {base['val_mae_months']:.1f}",
        )
    figs["optimization_history"] = history
    figs["intermediate_values"] = vis.plot_intermediate_values(study)
    if len(complete) >= 2 and study.best_trial.params:
        figs["param_importances"] = vis.plot_param_importances(study, target_name="val MAE")
        figs["parallel_coordinate"] = vis.plot_parallel_coordinate(study, target_name="val MAE")
        figs["slice"] = vis.plot_slice(study, target_name="val MAE")
    return figs


def _test_figures(out_dir: Path, retrained: dict[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    figs: dict[str, Any] = {}
    preds = {
        n: pd.read_csv(out_dir / f"predictions_{n}_seed0.csv")
        for n in ("best", "baseline")
        if (out_dir / f"predictions_{n}_seed0.csv").is_file()
    }
    if not preds:
        return figs
    colours = {"best": "seagreen", "baseline": "firebrick"}
    scatter = go.Figure()
    bland = go.Figure()
    for name, df in preds.items():
        scatter.add_scatter(x=df.age_months, y=df.pred_months, mode="markers", name=name, marker_color=colours[name])
        mean, diff = (df.pred_months + df.age_months) / 2, df.pred_months - df.age_months
        bland.add_scatter(x=mean, y=diff, mode="markers", name=name, marker_color=colours[name])
        for y, dash in (
            (diff.mean(), "solid"),
            (diff.mean() + 1.96 * diff.std(), "dot"),
            (diff.mean() - 1.96 * diff.std(), "dot"),
        ):
            bland.add_hline(y=y, line_dash=dash, line_color=colours[name])
    hi = float(max(df.age_months.max() for df in preds.values())) * 1.05
    scatter.add_scatter(x=[0, hi], y=[0, hi], mode="lines", name="identity", line=dict(color="gray", dash="dash"))
    scatter.update_layout(
        title="Predicted vs true bone age (test, seed 0)", xaxis_title="true (months)", yaxis_title="predicted (months)"
    )
    bland.update_layout(
        title="Bland-Altman (test, seed 0): bias and 95% limits of agreement",
        xaxis_title="mean of predicted and true (months)",
        yaxis_title="predicted - true (months)",
    )
    figs["predicted_vs_true"], figs["bland_altman"] = scatter, bland

    groups = [f"{lo}-{hi} mo" for lo, hi in AGE_BRACKETS_MONTHS] + ["male", "female"]
    bars = go.Figure()
    for name, df in preds.items():
        err = (df.pred_months - df.age_months).abs()
        vals = [err[(df.age_months >= lo) & (df.age_months < hi)].mean() for lo, hi in AGE_BRACKETS_MONTHS]
        vals += [err[df.male].mean(), err[~df.male].mean()]
        bars.add_bar(x=groups, y=vals, name=name, marker_color=colours[name])
    bars.update_layout(title="Test MAE by age bracket and sex (seed 0)", yaxis_title="MAE (months)", barmode="group")
    figs["mae_by_group"] = bars

    recipes = retrained.get("recipes", {})
    if recipes:
        names = list(recipes)
        ci = go.Figure(
            go.Bar(
                x=names,
                y=[recipes[n]["mae_mean"] for n in names],
                marker_color=[colours.get(n, "gray") for n in names],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[recipes[n]["mae_ci_high"] - recipes[n]["mae_mean"] for n in names],
                    arrayminus=[recipes[n]["mae_mean"] - recipes[n]["mae_ci_low"] for n in names],
                ),
            )
        )
        ci.update_layout(title="Test MAE with 95% bootstrap CI: baseline vs best", yaxis_title="MAE (months)")
        figs["baseline_vs_best"] = ci
    return figs


def _png_renderer() -> str | None:
    """None when PNGs can be written, else why not."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido; it also needs a Chromium, e.g. apt-get install chromium)"
    return None


def write_report(study: optuna.Study, results_dir: Path = Path("results")) -> Path:
    out_dir = results_dir / study.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_frame(study).to_csv(out_dir / "trials.csv", index=False)
    retrain_path = out_dir / "retrain.json"
    retrained = json.loads(retrain_path.read_text()) if retrain_path.is_file() else {}
    figs = {**_study_figures(study), **_test_figures(out_dir, retrained)}
    png_missing = _png_renderer()
    for name, fig in figs.items():
        fig.write_html(out_dir / f"{name}.html", include_plotlyjs="directory")
        if png_missing is None:
            try:
                fig.write_image(out_dir / f"{name}.png", width=900, height=550)
            except Exception as exc:  # kaleido without a Chromium
                png_missing = f"PNG export failed ({type(exc).__name__}); install a Chromium for kaleido"
    links = "\n".join(f'<li><a href="{n}.html">{n.replace("_", " ")}</a></li>' for n in figs)
    (out_dir / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
        f"<h1>Study {study.study_name}</h1><p><a href='summary.md'>summary.md</a> · "
        f"<a href='trials.csv'>trials.csv</a></p><ul>{links}</ul></body></html>\n"
    )
    summary = summary_dict(study, retrained, png_missing)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    (out_dir / "summary.md").write_text(summary_markdown(summary, list(figs), png_missing))
    return out_dir


def _json_default(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else str(x)


def summary_dict(study: optuna.Study, retrained: dict[str, Any], png_missing: str | None) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "study": study.study_name,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "epochs_trained": sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials),
        "search_wall_time_s": round(sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials), 1),
        "baseline_val": study.user_attrs.get("baseline", {}).get("val_mae_months"),
        "baseline_val_per_seed": study.user_attrs.get("baseline", {}).get("val_mae_per_seed"),
        "mean_predictor_val": study.user_attrs.get("baseline", {}).get("mean_predictor_val_mae_months"),
        "baseline_wall_s": study.user_attrs.get("baseline", {}).get("wall_time_s"),
        "png": "written" if png_missing is None else f"not written: {png_missing}",
    }
    if complete:
        out["best"] = {
            "trial": study.best_trial.number,
            "val_mae_months": study.best_value,
            "params": study.best_trial.params,
        }
    if retrained:
        out["test"] = retrained
    return out


def format_seeds(per_seed: list[float]) -> str:
    """'10.41, 13.56, 11.77': the baseline's val MAE of each seed, as every view prints them."""
    return ", ".join(f"{v:.2f}" for v in per_seed)


def _seeds_note(per_seed: list[float] | None) -> str:
    """' (mean of 3 seeds: 10.41, 13.56, 11.77)' for a baseline trained with several seeds."""
    if not per_seed or len(per_seed) < 2:
        return ""
    return f" (mean of {len(per_seed)} seeds: {format_seeds(per_seed)})"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def summary_markdown(s: dict[str, Any], figures: list[str], png_missing: str | None) -> str:
    t = s["trials"]
    lines = [
        f"# Study {s['study']}",
        "",
        f"Trials: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed; "
        f"{s['epochs_trained']} epochs trained in {s['search_wall_time_s'] / 60:.1f} min.",
        "",
    ]
    if "best" in s:
        params = ", ".join(
            f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in s["best"]["params"].items()
        )
        lines += [
            "## Search (validation split)",
            "",
            "| | val MAE (months) |",
            "|---|---|",
            f"| mean predictor | {_fmt(s['mean_predictor_val'])} |",
            f"| seed baseline{_seeds_note(s.get('baseline_val_per_seed'))} | {_fmt(s['baseline_val'])} |",
            f"| best trial ({s['best']['trial']}) | {_fmt(s['best']['val_mae_months'])} |",
            "",
            f"Best parameters: {params}.",
            "",
        ]
    if "test" in s:
        r, d = s["test"]["recipes"], s["test"]["best_minus_baseline"]
        lines += [
            "## Final test (retrained on train+val)",
            "",
            f"{s['test']['n_test']} test images, {s['test']['seeds']} seed(s) per recipe; the 95% CI is a "
            "bootstrap over test images.",
            "",
            "| recipe | test MAE (months) | 95% CI | SD over seeds | RMSE | bias | within 6 / 12 mo |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in r.items():
            m = e["metrics_seed0"]
            lines.append(
                f"| {name} | {e['mae_mean']:.2f} | {e['mae_ci_low']:.2f} to {e['mae_ci_high']:.2f} | "
                f"{e['mae_sd']:.2f} | {m['rmse_months']:.2f} | {m['bias_months']:+.2f} | "
                f"{m['within_6_months_pct']:.0f}% / {m['within_12_months_pct']:.0f}% |"
            )
        lines += [
            "",
            f"Best minus baseline, paired on the same images: {d['mae_diff_months']:+.2f} months "
            f"(95% CI {d['ci_low']:+.2f} to {d['ci_high']:+.2f}).",
            "",
        ]
        if any("tta_flip_mae_mean" in e for e in r.values()):
            lines += [
                "With test-time flip averaging: "
                + ", ".join(f"{n} {e['tta_flip_mae_mean']:.2f}" for n, e in r.items() if "tta_flip_mae_mean" in e)
                + " months.",
                "",
            ]
    lines += [
        "## How this was produced",
        "",
        "```",
        f"python -m search run --study {s['study']} --trials {t['complete'] + t['pruned']}",
        f"python -m search baseline --study {s['study']}",
    ]
    if "test" in s:
        tta = any("tta_flip_mae_mean" in e for e in s["test"]["recipes"].values())
        lines.append(
            f"python -m search retrain --study {s['study']} --seeds {s['test']['seeds']}" + (" --tta" if tta else "")
        )
    lines += [f"python -m search report --study {s['study']}", "```", ""]
    times = [f"training inside trials {s['search_wall_time_s'] / 60:.1f} min"]
    if s.get("baseline_wall_s"):
        times.append(f"baseline {s['baseline_wall_s']:.0f} s")
    if "test" in s:
        times += [f"retrain {n} {e['wall_time_s']:.0f} s" for n, e in s["test"]["recipes"].items()]
    lines += ["Wall times: " + ", ".join(times) + ".", ""]
    lines += ["## Figures", "", "Interactive versions: `index.html` (HTML pages sharing `plotly.min.js`, offline).", ""]
    for f in figures:
        title = f.replace("_", " ")
        lines.append(f"![{title}]({f}.png)" if png_missing is None else f"- [{title}]({f}.html)")
    lines += [
        "",
        "PNG copies: " + ("written beside the HTML." if png_missing is None else f"not written: {png_missing}."),
    ]
    return "\n".join(lines) + "\n"
