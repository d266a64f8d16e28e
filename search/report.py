"""Views of a study: the status text, the retrain lines, and results/<study>/ with tables and figures.

Every comparison of the tuned recipe with the seed recipe is stated from seed-aware numbers (see
boneage_core.metrics): "better" only where the CI over seeds and test images excludes zero, otherwise
"no significant difference". Figures are HTML sharing one plotly.min.js beside them (4.8 MB embedded
in each would be wasteful), so index.html opens offline; PNG copies are written when kaleido and a
Chromium are available.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from boneage_core.phantom import NOISE_FLOOR_MAE_MONTHS
from search.figures import FIGURES, GROUPS, recipe_name, search_figures, test_figures
from search.files import write_atomic, write_bytes_atomic, write_json
from search.page import figure_page, index_page
from search.record import SKIPPED_ATTR, command_line, describe_changes, plain, recorded_commands

# ---------------------------------------------------------------------------------------------------
# words from numbers


def format_seeds(per_seed: list[float]) -> str:
    """'10.41, 13.56, 11.77': one value per seed, as every view prints them."""
    return ", ".join(f"{v:.2f}" for v in per_seed)


def _pm(mean: float | None, sd: float | None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def verdict_sentence(d: dict[str, Any], what: str = "the best recipe", against: str = "the seed recipe") -> str:
    """The paired comparison (what minus against) in one sentence whose words follow its CI."""
    numbers = (
        f"{d['mae_diff_months']:+.2f} months (95% CI {d['ci_low']:+.2f} to {d['ci_high']:+.2f}; "
        f"not better in {100 * d['p_a_not_better']:.1f}% of resamples)"
    )
    v = d["verdict"]
    if v == "better":
        return f"{what} is better than {against}: {numbers}"
    if v == "worse":
        return f"{what} is worse than {against}: {numbers}"
    if v == "undetermined":
        return (
            f"{what} minus {against}: {numbers}; no verdict with one seed per recipe, since the CI "
            "cannot see the seed-to-seed spread (retrain with --seeds 3)"
        )
    return f"no significant difference between {what} and {against}: {numbers}"


def recipe_label(name: str, r: dict[str, Any]) -> str:
    """A recipe as tables name it: with the trial or trials it comes from."""
    if name.startswith("best"):
        return f"{recipe_name(name, r)} (trial {r['best_trial']})"
    if name.startswith("ensemble"):
        return f"{recipe_name(name, r)} (trials {', '.join(str(m['trial']) for m in r.get('members', []))})"
    return recipe_name(name, r)


def comparison_lines(r: dict[str, Any]) -> list[str]:
    """Every paired comparison beyond the verdict (top-k ensemble, bias correction), a sentence each."""
    lines = []
    for key, d in r.get("comparisons", {}).items():
        a, b = key.split("_minus_")
        against = "the seed recipe" if b == "baseline" else f"the {recipe_name(b, r)}"
        lines.append(_capital(verdict_sentence(d, f"the {recipe_name(a, r)}", against)))
    return lines


def correction_lines(r: dict[str, Any]) -> list[str]:
    """Each bias correction's line, fitted on its trials' val predictions."""
    lines = []
    for name, c in r.get("bias_correction", {}).items():
        lines.append(
            f"bias correction of the {recipe_name(name, r)}: corrected = {c['slope']:.3f} x predicted "
            f"{c['intercept']:+.2f} months, fitted on the val predictions of trial(s) "
            f"{', '.join(map(str, c['trials']))} ({c['n']} images none of them trained on)"
        )
    return lines


def format_params(params: dict[str, Any], sep: str = " = ") -> str:
    """'lr = 0.00116, batch_size = 32': a trial's parameters, floats to 3 significant digits."""
    return ", ".join(f"{k}{sep}{v:.3g}" if isinstance(v, float) else f"{k}{sep}{v}" for k, v in params.items())


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def val_comparison(best: float, seed_mae: list[float]) -> str:
    """The best trial against the seed recipe on val: the sign said in words, and where the best lies
    in the seed recipe's own spread (one trial is one seed, so this is no verdict)."""
    mean = float(np.mean(seed_mae))
    pct = 100 * (best / mean - 1)
    words = f"{abs(pct):.1f}% {'lower' if pct < 0 else 'higher'} than the seed recipe's mean"
    if len(seed_mae) < 2:
        return words + " (one seed of the seed recipe: its spread is unknown)"
    lo, hi = min(seed_mae), max(seed_mae)
    if best < lo:
        where = f"below all {len(seed_mae)} of its seeds ({lo:.2f} to {hi:.2f})"
    elif best > hi:
        where = f"above all {len(seed_mae)} of its seeds ({lo:.2f} to {hi:.2f})"
    else:
        where = f"inside the range of its {len(seed_mae)} seeds ({lo:.2f} to {hi:.2f})"
    return f"{words}, {where}"


def recipe_line(name: str, out: dict[str, Any]) -> str:
    r, seeds = out["recipes"][name], out["seeds"]
    m = r["mae"]
    spread = f", SD {m['sd']:.2f} over {seeds} seeds ({format_seeds(r['mae_per_seed'])})" if seeds > 1 else ""
    ci = "seeds and images" if seeds > 1 else "images only"
    return (
        f"{recipe_label(name, out)}: test MAE {m['mean']:.2f} months{spread}; 95% CI {m['ci_low']:.2f} to "
        f"{m['ci_high']:.2f} ({ci})"
    )


def retrain_lines(out: dict[str, Any]) -> list[str]:
    """What retrain prints: each recipe, the seed recipe as the seed evaluated it, the verdict, then the
    ensemble's and the bias corrections' comparisons."""
    lines = [recipe_line(n, out) for n in out["recipes"]]
    base = out["recipes"]["baseline"]
    if "without_bn_reestimation" in base:
        lines.append(
            f"seed recipe evaluated as the seed project did (no batch-norm re-estimation): "
            f"{base['without_bn_reestimation']['mae']['mean']:.2f} months"
        )
    if out.get("seed_recipe_modified"):
        lines.append(f"modified seed recipe: {describe_changes(out['seed_recipe_modified'])}")
    if out.get("overrides", {}).get("best"):
        lines.append(f"best recipe changed for this retrain: {describe_changes(out['overrides']['best'])}")
    lines.append(_capital(verdict_sentence(out["best_minus_baseline"])) + f", on the same {out['n_test']} test images")
    if "best_minus_baseline_tta_flip" in out:
        lines.append("With flip TTA: " + verdict_sentence(out["best_minus_baseline_tta_flip"]))
    return lines + [_capital(line) for line in correction_lines(out)] + comparison_lines(out)


# ---------------------------------------------------------------------------------------------------
# status


def status_text(study: optuna.Study) -> str:
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
    lines += _baseline_status(study.user_attrs.get("baseline"), study.best_value if done else None)
    retrained = study.user_attrs.get("retrain")
    if retrained:
        r, d = retrained["recipes"], retrained["best_minus_baseline"]
        lines.append(
            f"final test ({retrained['seeds']} seeds, {retrained['n_test']} images): best "
            f"{_pm(r['best']['mae']['mean'], r['best']['mae']['sd'])}, seed recipe "
            f"{_pm(r['baseline']['mae']['mean'], r['baseline']['mae']['sd'])} months; {verdict_sentence(d)}"
        )
        for key, c in retrained.get("comparisons", {}).items():
            a, b = key.split("_minus_")
            if b == "baseline":  # each other final model against the seed recipe
                what, mae = recipe_name(a, retrained), _pm(r[a]["mae"]["mean"], r[a]["mae"]["sd"])
                lines.append(f"  {what}: {mae} months; {verdict_sentence(c, what)}")
    else:
        lines.append("final test: not run yet (python -m search retrain)")
    spent = sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials)
    epochs = sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)
    lines.append(f"time spent training: {spent / 60:.1f} min over {epochs} epochs")
    return "\n".join(lines)


def _baseline_status(base: dict[str, Any] | None, best_value: float | None) -> list[str]:
    if not base:
        return ["seed recipe: not run yet (python -m search baseline)"]
    per_seed = base.get("val_mae_per_seed", [base["val_mae_months"]])
    what = "modified seed recipe" if base.get("modified") else "seed recipe"
    sd = f"; SD {base['val_mae_sd']:.2f}" if base.get("val_mae_sd") is not None else ""
    lines = [
        f"{what}: val MAE {base['val_mae_months']:.2f} months, mean of {len(per_seed)} seed(s) "
        f"({format_seeds(per_seed)}{sd})"
    ]
    if base.get("modified"):
        lines.append(f"  changed from the study file: {describe_changes(base['modified'])}")
    if "mean_predictor_val_mae_months" in base:
        lines.append(f"mean predictor: val MAE {base['mean_predictor_val_mae_months']:.2f} months")
    if best_value is not None:
        lines.append(f"best vs seed recipe (val): {val_comparison(best_value, per_seed)}")
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
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido; it also needs a Chromium, e.g. apt-get install chromium)"
    return None


def read_retrain(out_dir: Path, study: optuna.Study) -> tuple[dict[str, Any], str | None]:
    """results/<study>/retrain.json when it belongs to this study's data, with a note when it was left out."""
    path = out_dir / "retrain.json"
    if not path.is_file():
        return {}, None
    try:
        retrained = json.loads(path.read_text())
    except (OSError, ValueError):
        retrained = None
    seed_aware = isinstance(retrained, dict) and "group_n" in retrained and "best_minus_baseline" in retrained
    if not seed_aware:
        return {}, f"{path} is unreadable or from an older version: rerun `python -m search retrain`"
    stored = study.user_attrs.get("settings", {}).get("data_fingerprint")
    if stored and retrained.get("data_fingerprint") != stored:
        return {}, f"{path} was made on other data than this study's: rerun `python -m search retrain`"
    return retrained, None


def write_report(study: optuna.Study, results_dir: Path = Path("results"), argv: list[str] | None = None) -> Path:
    """results/<study>/: trials.csv, summary.json and .md, index.html (the report, figures inline), a page
    and (with kaleido and a Chromium) a PNG per figure."""
    out_dir = results_dir / study.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "trials.csv", trials_frame(study).to_csv(index=False))
    retrained, retrain_note = read_retrain(out_dir, study)
    figs = {**search_figures(study), **test_figures(out_dir, retrained)}
    png_missing = _write_figures(out_dir, study.study_name, figs)
    summary = summary_dict(study, retrained, png_missing, argv)
    if retrain_note:
        summary["retrain_note"] = retrain_note
    write_json(out_dir / "summary.json", summary)
    lines = summary_lines(summary)
    write_atomic(out_dir / "summary.md", "\n".join(lines + _figures_section(list(figs), png_missing)) + "\n")
    write_atomic(out_dir / "index.html", index_page(study.study_name, lines, figs, _png_words(png_missing)))
    return out_dir


def _write_figures(out_dir: Path, study_name: str, figs: dict[str, Any]) -> str | None:
    """plotly.min.js once, a page and a PNG per figure; None when the PNGs were written, else why not."""
    from plotly.offline import get_plotlyjs

    png_missing = _png_renderer()
    write_atomic(out_dir / "plotly.min.js", get_plotlyjs())  # shared by every page, offline
    for name, fig in figs.items():
        write_atomic(out_dir / f"{name}.html", figure_page(study_name, name, fig))
        if png_missing is None:
            try:
                write_bytes_atomic(out_dir / f"{name}.png", fig.to_image(format="png", width=900, height=550))
            except Exception as exc:  # kaleido without a Chromium
                png_missing = f"PNG export failed ({type(exc).__name__}); install a Chromium for kaleido"
    return png_missing


def _png_words(png_missing: str | None) -> str:
    return "PNG copies: " + ("written beside this page." if png_missing is None else f"not written: {png_missing}.")


def study_note(study: optuna.Study, retrained: dict[str, Any] | None = None) -> str:
    """The study's note in optuna-dashboard (Markdown): the verdict when there is a final test, the
    validation table and the final-test table, from the same words and numbers as summary.md."""
    s = summary_dict(study, retrained or {}, png_missing=None)
    lines = [f"# Study {study.study_name}: val and test MAE in months", ""]
    if "test" in s:
        verdict = verdict_sentence(s["test"]["best_minus_baseline"])
        lines += [f"**Verdict** ({s['test']['seeds']} seeds per recipe): {verdict}.", ""]
    lines += _val_section(s)
    if "test" in s:
        lines += _test_section(s["test"])
    lines += ["Written by `python -m search baseline` and `retrain`; `python -m search report` has the figures."]
    return "\n".join(lines) + "\n"


def save_study_note(study: optuna.Study, retrained: dict[str, Any] | None = None) -> None:
    from optuna_dashboard import save_note

    save_note(study, study_note(study, retrained))


def summary_dict(
    study: optuna.Study, retrained: dict[str, Any], png_missing: str | None, argv: list[str] | None = None
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    settings = study.user_attrs.get("settings", {})
    out: dict[str, Any] = {
        "study": study.study_name,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "target_trials": study.user_attrs.get("target_trials"),
        "epochs_trained": sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials),
        "search_wall_time_s": round(sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials), 1),
        "baseline": study.user_attrs.get("baseline"),
        "noise_floor_val_mae_months": NOISE_FLOOR_MAE_MONTHS
        if settings.get("data", {}).get("source") == "phantom"
        else None,
        "settings": settings,
        "skipped_images": study.user_attrs.get(SKIPPED_ATTR, {}),
        "commands": recorded_commands(study),
        "report_command": command_line(argv) if argv is not None else None,
        "png": "written" if png_missing is None else f"not written: {png_missing}",
    }
    if out["baseline"]:
        out["baseline"] = {k: v for k, v in out["baseline"].items() if k != "histories"}
    if complete:
        out["best"] = {
            "trial": study.best_trial.number,
            "val_mae_months": study.best_value,
            "params": study.best_trial.params,
        }
        if out["baseline"]:
            out["best"]["vs_seed_recipe_val"] = val_comparison(study.best_value, out["baseline"]["val_mae_per_seed"])
    if retrained:
        out["test"] = retrained
    return out


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The report's words and tables in Markdown, figures aside: summary.md and index.html both hold them."""
    t = s["trials"]
    target = f" (target {s['target_trials']})" if s.get("target_trials") else ""
    lines = [f"# Study {s['study']}", ""]
    if "test" in s:
        lines += [
            f"**Verdict** (final test, {s['test']['seeds']} seeds per recipe): "
            f"{verdict_sentence(s['test']['best_minus_baseline'])}.",
            "",
        ]
    elif s.get("retrain_note"):
        lines += [f"No final test: {s['retrain_note']}.", ""]
    else:
        lines += ["No final test yet: `python -m search retrain` gives the verdict.", ""]
    lines += [
        f"Trials: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed{target}; "
        f"{s['epochs_trained']} epochs trained in {s['search_wall_time_s'] / 60:.1f} min.",
        "",
    ]
    lines += _val_section(s) + (_test_section(s["test"]) if "test" in s else [])
    return lines + _settings_section(s) + _provenance_section(s)


def _val_section(s: dict[str, Any]) -> list[str]:
    base = s.get("baseline")
    if "best" not in s and not base:
        return []
    lines = ["## Search (validation split)", "", "| | val MAE (months) |", "|---|---|"]
    if base:
        per_seed = base["val_mae_per_seed"]
        what = "modified seed recipe" if base.get("modified") else "seed recipe"
        lines += [
            f"| mean predictor (training mean for everyone) | {_pm(base.get('mean_predictor_val_mae_months'), None)} |"
        ]
        lines += [f"| {what}, seed {k} | {v:.2f} |" for k, v in enumerate(per_seed)]
        lines += [
            f"| {what}, mean ± SD over {len(per_seed)} seeds | {_pm(base['val_mae_months'], base.get('val_mae_sd'))} |"
        ]
    if "best" in s:
        lines += [f"| best trial ({s['best']['trial']}), one seed | {_pm(s['best']['val_mae_months'], None)} |"]
    if s.get("noise_floor_val_mae_months"):
        lines += [f"| label noise floor (phantom: no model can expect less) | {s['noise_floor_val_mae_months']:.2f} |"]
    lines.append("")
    if "best" in s:
        params = format_params(s["best"]["params"])
        lines += [f"Best parameters: {params}.", ""]
        if "vs_seed_recipe_val" in s["best"]:
            lines += [
                f"On val the best trial is {s['best']['vs_seed_recipe_val']}. A trial is one seed picked as the "
                "lowest of many, so val says where to look, not whether the recipe is better: the final test "
                "below does.",
                "",
            ]
    if base and base.get("modified"):
        lines += [f"Modified seed recipe: {describe_changes(base['modified'])} (from the study file's [baseline]).", ""]
    return lines


def _test_section(r: dict[str, Any]) -> list[str]:
    """The final test: what was trained and scored, the table, the comparison, MAE by group."""
    seeds, n = r["seeds"], r["n_test"]
    lines = [
        "## Final test (retrained on train+val)",
        "",
        f"{n} test images, {seeds} seed(s) per recipe, every recipe trained on the same {r['n_trainval']} "
        "images and scored on the same test images. Every column is the mean over seeds ± the SD over "
        "seeds; the MAE's 95% CI is a two-stage bootstrap (seeds, then test images). Evaluation, the same "
        "for every recipe: batch-norm statistics re-estimated on un-augmented training images, no "
        "test-time augmentation.",
        "",
        "| recipe | MAE (months) | 95% CI | MAE per seed | RMSE | bias | R² | within 6 / 12 mo (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return lines + _recipe_rows(r) + _comparison_notes(r) + _group_table(r)


def _recipe_rows(r: dict[str, Any]) -> list[str]:
    """One row per recipe: every column the mean over seeds ± the SD over seeds."""
    lines = []
    for name, e in r["recipes"].items():
        m, sd = e["metrics_mean"], e["metrics_sd"]
        label = recipe_label(name, r)
        lines.append(
            f"| {label} | {_pm(e['mae']['mean'], e['mae']['sd'])} | {e['mae']['ci_low']:.2f} to "
            f"{e['mae']['ci_high']:.2f} | {format_seeds(e['mae_per_seed'])} | "
            f"{_pm(m['rmse_months'], sd['rmse_months'])} | "
            f"{_pm(m['bias_months'], sd['bias_months'])} | {_pm(m['r2'], sd['r2'], 3)} | "
            f"{_pm(m['within_6_months_pct'], sd['within_6_months_pct'], 0)} / "
            f"{_pm(m['within_12_months_pct'], sd['within_12_months_pct'], 0)} |"
        )
    return lines


def _comparison_notes(r: dict[str, Any]) -> list[str]:
    """The paired comparison, the seed ensembles, flip TTA, the seed's own evaluation, any changes."""
    seeds = r["seeds"]
    d = r["best_minus_baseline"]
    lines = [
        "",
        f"Best minus seed recipe, paired on the same images with each recipe's seeds resampled: {verdict_sentence(d)}.",
        "",
    ]
    ens, e = d["ensembles"], {k: v["ensemble"] for k, v in r["recipes"].items()}
    if seeds > 1:
        lines += [
            f"Seed ensembles (each recipe's {seeds} seed predictions averaged into one model, a different model "
            f"from any single seed): best {e['best']['mae_months']:.2f}, seed recipe {e['baseline']['mae_months']:.2f} "
            f"months; difference {ens['mae_diff_months']:+.2f} (95% CI over images {ens['ci_low']:+.2f} to "
            f"{ens['ci_high']:+.2f}).",
            "",
        ]
    if "best_minus_baseline_tta_flip" in r:
        tta = {k: v["tta_flip"]["mae"] for k, v in r["recipes"].items()}
        lines += [
            f"With test-time flip averaging (both recipes): best {_pm(tta['best']['mean'], tta['best']['sd'])}, "
            f"seed recipe {_pm(tta['baseline']['mean'], tta['baseline']['sd'])} months; "
            f"{verdict_sentence(r['best_minus_baseline_tta_flip'])}.",
            "",
        ]
    raw = r["recipes"]["baseline"].get("without_bn_reestimation")
    if raw:
        lines += [
            f"The seed recipe evaluated as the seed project did (batch-norm statistics from training, not "
            f"re-estimated): {_pm(raw['mae']['mean'], raw['mae']['sd'])} months, against "
            f"{_pm(r['recipes']['baseline']['mae']['mean'], r['recipes']['baseline']['mae']['sd'])} with this "
            "project's protocol.",
            "",
        ]
    lines += _ensemble_notes(r)
    if r.get("seed_recipe_modified"):
        lines += [f"**Modified seed recipe**: {describe_changes(r['seed_recipe_modified'])}.", ""]
    if r.get("overrides", {}).get("best"):
        lines += [f"Best recipe changed for this retrain: {describe_changes(r['overrides']['best'])}.", ""]
    return lines


def _ensemble_notes(r: dict[str, Any]) -> list[str]:
    """The top-k ensemble's members, the bias corrections, and every comparison they bring."""
    lines = []
    if r.get("top_k", 1) > 1:
        lines += [
            f"The top-{r['top_k']} ensemble averages, for each seed k, the seed-k models of the {r['top_k']} best "
            "distinct configurations of the search, each retrained like the best; its CIs resample its seeds "
            "(sets of models) and the test images like any recipe's. Its members:",
            "",
            "| rank | trial | val MAE (months, one seed) | test MAE (months) | parameters |",
            "|---|---|---|---|---|",
        ]
        for m in r.get("members", []):
            params = format_params(m["params"])
            lines.append(
                f"| {m['rank']} | {m['trial']} | {m['val_mae_months']:.2f} | {_pm(m['mae']['mean'], m['mae']['sd'])} "
                f"| {params} |"
            )
        lines.append("")
    corrections = correction_lines(r)
    if corrections:
        lines += [
            "Bias correction, a line fitted on held-out val predictions against the shrinkage of predictions "
            "toward the mean age (as Deeplasia does); the test images play no part in it:",
            "",
            *[f"- {_capital(c)}." for c in corrections],
            "",
        ]
    compared = comparison_lines(r)
    if compared:
        lines += ["Paired on the same images, each side's seeds resampled:", "", *[f"- {c}." for c in compared], ""]
    return lines


def _group_table(r: dict[str, Any]) -> list[str]:
    names = list(r["recipes"])
    lines = [
        f"MAE by group (months, mean ± SD over {r['seeds']} seeds; n = test images in the group):",
        "",
        "| group | n | " + " | ".join(recipe_name(n, r) for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for metric, key, label in GROUPS:
        cells = [_pm(r["recipes"][n]["metrics_mean"][metric], r["recipes"][n]["metrics_sd"][metric]) for n in names]
        lines.append(f"| {label} | {r['group_n'][key]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _settings_section(s: dict[str, Any]) -> list[str]:
    settings = s.get("settings")
    if not settings:
        return []
    data = ", ".join(f"{k} {v}" for k, v in settings["data"].items())
    skipped = s.get("skipped_images") or {}
    listed = ", ".join(f"{k} ({why})" for k, why in list(skipped.items())[:5]) + (", ..." if len(skipped) > 5 else "")
    return [
        "## Settings (fixed when the study was created)",
        "",
        f"- data: {data}; fingerprint {settings.get('data_fingerprint')}",
        *([f"- skipped images ({len(skipped)}, all in summary.json): {listed}"] if skipped else []),
        f"- fixed training fields: {_fields(settings['train'])}",
        f"- seed recipe: {_fields(settings['baseline'])}",
        f"- searched: {', '.join(settings['space']) or 'nothing'}",
        "",
    ]


def _fields(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {plain(v)}" for k, v in d.items())


def _provenance_section(s: dict[str, Any]) -> list[str]:
    commands = s.get("commands") or []
    lines = [
        "## How this was produced",
        "",
        "The commands recorded in the study, as typed, then this report's:",
        "",
        "```",
    ]
    lines += [c["command"] for c in commands]
    if s.get("report_command"):
        lines.append(s["report_command"])
    lines += ["```", ""]
    if commands:
        last = commands[-1]
        lines += [
            f"Last command {last['started_utc']}: boneage-search {last.get('boneage_search')} "
            f"(commit {last.get('git_commit') or 'unknown'}), Python {last['python']}, torch {last['torch']}, "
            f"optuna {last['optuna']}, on {last['device']}.",
            "",
        ]
    times = [f"training inside trials {s['search_wall_time_s'] / 60:.1f} min"]
    if s.get("baseline"):
        times.append(f"seed recipe on val {s['baseline']['wall_time_s']:.0f} s")
    if "test" in s:
        for n, e in s["test"]["recipes"].items():
            times += [f"retrain {recipe_name(n, s['test'])} {e['wall_time_s']:.0f} s"] if "wall_time_s" in e else []
    return lines + ["Wall times: " + ", ".join(times) + ".", ""]


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
