"""Views of a study, all from what the study holds: the status text, the dashboard note, and
results/<study>/ with the report page, summary.md/json, trials.csv and the figures.

Every comparison of the tuned recipe with the baseline is stated from seed-aware numbers (see
boneage_core.metrics): "better" only where the CI over seeds and test images excludes zero, otherwise
"no significant difference". Figures are HTML sharing one plotly.min.js beside them (4.8 MB embedded
in each would be wasteful), so index.html opens offline; PNG copies are written when kaleido and a
Chromium are available.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from boneage_core.phantom import NOISE_FLOOR_MAE_MONTHS
from search.reporting.budget import budget_curve, budget_figure
from search.reporting.document import Heading, code, para, plural, to_markdown
from search.reporting.figures import FIGURES, recipe_name, search_figures, test_figures
from search.reporting.page import figure_page, index_page
from search.reporting.summary import summary_blocks, test_section, val_section, verdict_block
from search.reporting.words import (
    comparison_sentence,
    duration,
    format_params,
    format_seeds,
    pm,
    reselection_line,
    val_comparison,
)
from search.storage.provenance import command_line, recorded_commands
from search.storage.results import (
    BaselineResult,
    final_test_files,
    load_baseline,
    load_retrain,
    to_json,
    write_files,
)
from search.storage.settings import SETTINGS_ATTR, describe_changes
from search.storage.study import redact
from search.storage.trials import SKIPPED_ATTR
from search.storage.truth import StudyRef
from search.storage.writes import png_turned_off, set_aside, write_atomic, write_bytes_atomic, write_json

# ---------------------------------------------------------------------------------------------------
# status


def status_text(study: optuna.Study, ref: StudyRef) -> str:
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    target = study.user_attrs.get("target_trials")
    lines = [
        f"study {study.study_name}: {len(trials)} trials: "
        + (", ".join(f"{n} {s}" for s, n in by_state.items() if n) or "none yet")
        + (f" (target {target} finished, from the last run)" if target else "")
    ]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        params = format_params(best.params, "=")
        lines.append(f"best: trial {best.number}, val MAE {best.value:.2f} months, one seed ({params})")
    else:
        lines.append("best: no completed trial yet")
    lines += _baseline_status(load_baseline(study, ref.hint("baseline")), study.best_value if done else None, ref)
    retrained = load_retrain(study, ref.hint("retrain"))
    if retrained:
        r, d, seed = retrained.recipes, retrained.best_minus_baseline, recipe_name("baseline", retrained)
        lines.append(
            f"final test ({plural(retrained.seeds, 'seed')}, {retrained.n_test} images): "
            f"best (trial {retrained.best_trial}) "
            f"{pm(r['best'].mae.mean, r['best'].mae.sd)}, {seed} "
            f"{pm(r['baseline'].mae.mean, r['baseline'].mae.sd)} months; "
            f"{comparison_sentence(retrained, 'best', 'baseline', d)}"
        )
        if retrained.reselection:
            lines.append(f"  {reselection_line(retrained)}")
        if done and study.best_trial.number != retrained.searched_best:
            lines.append(
                f"  the final test scored trial {retrained.best_trial}; the search has since found trial "
                f"{study.best_trial.number}: {ref.hint('retrain')} tests it"
            )
        changed = {"baseline": retrained.baseline_modified, "best recipe": retrained.overrides.get("best")}
        for what, change in changed.items():
            if change:
                lines.append(f"  {what} changed for this retrain: {describe_changes(change)}")
        for key, c in retrained.comparisons.items():
            a, b = key.split("_minus_")
            if b == "baseline":  # each other final model against the baseline
                what, mae = recipe_name(a, retrained), pm(r[a].mae.mean, r[a].mae.sd)
                lines.append(f"  {what}: {mae} months; {comparison_sentence(retrained, a, b, c)}")
    else:
        lines.append(f"final test: not run yet ({ref.hint('retrain')})")
    spent = sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials)
    epochs = sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)
    lines.append(f"time spent training: {duration(spent)} over {plural(epochs, 'epoch')}")
    lines.append(f"settings: stored in the study in {redact(ref.url)}{_created_from(study)}")
    return "\n".join(lines)


def _created_from(study: optuna.Study) -> str:
    made = recorded_commands(study)[:1]
    return f" (created by `{made[0]['command']}`)" if made else ""


def _baseline_status(base: BaselineResult | None, best_value: float | None, ref: StudyRef) -> list[str]:
    if not base:
        return [f"baseline: not run yet ({ref.hint('baseline')})"]
    per_seed = base.val_mae_per_seed
    sd = f"; SD {base.val_mae_sd:.2f}" if base.val_mae_sd is not None else ""
    lines = [
        f"baseline: val MAE {base.val_mae_months:.2f} months, mean of {plural(len(per_seed), 'seed')} "
        f"({format_seeds(per_seed)}{sd})",
        f"mean predictor: val MAE {base.mean_predictor_val_mae_months:.2f} months",
    ]
    if best_value is not None:
        lines.append(f"best vs baseline (val): {val_comparison(best_value, per_seed)}")
    return lines


# ---------------------------------------------------------------------------------------------------
# results/<study>/


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


def _png_renderer() -> str | None:
    """None when PNGs can be written, else why not."""
    if (off := png_turned_off()) is not None:
        return off
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido; it also needs a Chromium, e.g. apt-get install chromium)"
    return None


def write_report(
    study: optuna.Study, ref: StudyRef, results_dir: Path = Path("results"), argv: list[str] | None = None
) -> tuple[Path, Path | None]:
    """results/<study>/ from what the study holds, whatever the directory: trials.csv, summary.json and
    .md, index.html (the report, figures inline), a page and (with kaleido and a Chromium) a PNG per
    figure. A report file there that this study does not write again (an earlier study of the same
    name: its final test, a figure this study lacks) is moved into superseded-<time>/, never shown as
    this study's; returned beside out_dir (None when there was none)."""
    out_dir = results_dir / study.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    before = report_files(out_dir)
    written = [out_dir / "trials.csv", out_dir / "summary.json", out_dir / "summary.md", out_dir / "index.html"]
    write_atomic(written[0], trials_frame(study).to_csv(index=False))
    baseline, retrained = load_baseline(study, ref.hint("baseline")), load_retrain(study, ref.hint("retrain"))
    if retrained:
        written += write_files(retrained, out_dir)  # retrain.json and the predictions, wherever the report is
    figs = {**search_figures(study, baseline), **(test_figures(retrained) if retrained else {})}
    curve = budget_curve(study)
    if curve:
        figs["expected_best"] = budget_figure(curve, baseline)
    figs = {name: figs[name] for name in FIGURES if name in figs}  # the page's order
    png_missing, pages = _write_figures(out_dir, study.study_name, figs)
    summary = summary_dict(study, ref, png_missing, argv)
    write_json(out_dir / "summary.json", summary_json(summary))
    blocks = summary_blocks(summary)
    markdown = to_markdown(blocks) + _figures_section(list(figs), png_missing)
    write_atomic(out_dir / "summary.md", "\n".join(markdown) + "\n")
    write_atomic(out_dir / "index.html", index_page(study.study_name, blocks, figs, _png_words(png_missing)))
    return out_dir, set_aside(out_dir, sorted(set(before) - set(written) - set(pages)))


def report_files(out_dir: Path) -> list[Path]:
    """The files in out_dir that a report writes: a final test's copies and every figure's page and PNG."""
    figures = [out_dir / f"{name}.{ext}" for name in FIGURES for ext in ("html", "png")]
    return final_test_files(out_dir) + [p for p in figures if p.is_file()]


def _write_figures(out_dir: Path, study_name: str, figs: dict[str, Any]) -> tuple[str | None, list[Path]]:
    """plotly.min.js once, a page and a PNG per figure: None when the PNGs were written, else why not;
    and the files written."""
    from plotly.offline import get_plotlyjs

    png_missing = _png_renderer()
    write_atomic(out_dir / "plotly.min.js", get_plotlyjs())  # shared by every page, offline
    pages = []
    for name, fig in figs.items():
        pages.append(out_dir / f"{name}.html")
        write_atomic(pages[-1], figure_page(study_name, name, fig))
        if png_missing is None:
            try:
                write_bytes_atomic(out_dir / f"{name}.png", fig.to_image(format="png", width=900, height=550))
                pages.append(out_dir / f"{name}.png")
            except Exception as exc:  # kaleido without a Chromium
                png_missing = f"PNG export failed ({type(exc).__name__}); install a Chromium for kaleido"
    return png_missing, pages


def _png_words(png_missing: str | None) -> str:
    return "PNG copies: " + ("written beside this page." if png_missing is None else f"not written: {png_missing}.")


def study_note(study: optuna.Study, ref: StudyRef) -> str:
    """The study's note in optuna-dashboard (Markdown): the verdict when there is a final test, the
    validation table and the final-test table, from the results the study holds (whichever command
    wrote the note last) and the same words as summary.md."""
    s = summary_dict(study, ref, png_missing=None)
    blocks = [Heading(1, f"Study {study.study_name}: val and test MAE in months"), verdict_block(s)]
    blocks += val_section(s) + (test_section(s["test"]) if s["test"] else [])
    blocks.append(
        para(
            "Written by ",
            code("python -m search baseline"),
            " and ",
            code("retrain"),
            "; ",
            code(ref.hint("report")),
            " has the figures.",
        )
    )
    return "\n".join(to_markdown(blocks))


def save_study_note(study: optuna.Study, ref: StudyRef) -> None:
    from optuna_dashboard import save_note

    save_note(study, study_note(study, ref))


def summary_dict(
    study: optuna.Study, ref: StudyRef, png_missing: str | None, argv: list[str] | None = None
) -> dict[str, Any]:
    """What the report says, from the study alone: the trials, the settings, the stored results."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    out: dict[str, Any] = {
        "study": study.study_name,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "target_trials": study.user_attrs.get("target_trials"),
        "epochs_trained": sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials),
        "search_wall_time_s": round(sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials), 1),
        "baseline": load_baseline(study, ref.hint("baseline")),
        "test": load_retrain(study, ref.hint("retrain")),
        "hint": ref.hint("retrain"),
        "noise_floor_val_mae_months": NOISE_FLOOR_MAE_MONTHS
        if settings.get("data", {}).get("source") == "phantom"
        else None,
        "budget": budget_curve(study),
        "settings": settings,
        "skipped_images": study.user_attrs.get(SKIPPED_ATTR, {}),
        "commands": recorded_commands(study),
        "report_command": command_line(argv) if argv is not None else None,
        "png": "written" if png_missing is None else f"not written: {png_missing}",
    }
    out["compute"] = compute(out)
    if complete:
        out["best"] = {
            "trial": study.best_trial.number,
            "val_mae_months": study.best_value,
            "params": study.best_trial.params,
        }
        if out["baseline"]:
            out["best"]["vs_baseline_val"] = val_comparison(study.best_value, out["baseline"].val_mae_per_seed)
    return out


def compute(s: dict[str, Any]) -> dict[str, Any]:
    """What the study's results cost in wall time, step by step and in all, and where each step ran:
    the search (the trials' training), the baseline on val, the noise-aware choice, the final test."""
    devices: dict[str, list[str]] = {}
    for c in s["commands"]:
        verb = c["argv"][0] if c.get("argv") else "command"
        if c.get("device") and c["device"] not in devices.setdefault(verb, []):
            devices[verb].append(c["device"])
    steps = {
        "search_s": s["search_wall_time_s"],
        "baseline_val_s": s["baseline"].wall_time_s if s["baseline"] else None,
    }
    r = s["test"]
    if r:
        steps["reselection_s"] = r.reselection.wall_time_s if r.reselection else None
        trained = [m.wall_time_s for m in r.members] + [r.recipes["baseline"].wall_time_s or 0.0]
        steps["final_test_s"] = round(sum(trained), 1)
    total = round(sum(v for v in steps.values() if v is not None), 1)
    return {**steps, "total_s": total, "epochs_searched": s["epochs_trained"], "devices": devices}


def summary_json(s: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the summary with the stored results as data, less what is bulky (the baseline's
    per-epoch histories, the per-image predictions: the prediction files and retrain.json hold them)."""
    out = dict(s)
    if s["baseline"]:
        out["baseline"] = {k: v for k, v in to_json(s["baseline"]).items() if k != "histories"}
    if s["test"]:
        test = to_json(s["test"])
        for part in (*test["recipes"].values(), *test["members"]):
            part.pop("pred_months")
        out["test"] = {k: v for k, v in test.items() if not k.startswith("test_")} | {"n_test": s["test"].n_test}
    return out


def _figures_section(figures: list[str], png_missing: str | None) -> list[str]:
    lines = [
        "## Figures",
        "",
        "The report with every figure inline: `index.html` (offline, beside `plotly.min.js`).",
        "",
    ]
    for f in figures:
        title = FIGURES[f][0]
        lines.append(f"![{title}]({f}.png)" if png_missing is None else f"- [{title}]({f}.html)")
    return [*lines, "", _png_words(png_missing).replace("this page", "the HTML")]
