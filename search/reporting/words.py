"""Words from numbers: a comparison as a sentence whose words follow its CI, seeds and parameters as
every view prints them, the lines retrain prints. Shared by status, the report and the note."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from search.reporting.axes import signed
from search.reporting.document import plural
from search.reporting.figures import recipe_name
from search.storage.results import Comparison, RetrainResult
from search.storage.settings import describe_changes


def format_seeds(per_seed: list[float]) -> str:
    """'10.41, 13.56, 11.77': one value per seed, as every view prints them."""
    return ", ".join(f"{v:.2f}" for v in per_seed)


def pm(mean: float | None, sd: float | None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def duration(seconds: float) -> str:
    """'45 s' under two minutes, else '12.3 min': never a '0.0 min' for a short run."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def percent(share: float) -> str:
    """A share as a percentage with the digits it needs: 12.3%, 0.43%, 0.025% (never a 0.0% that hides
    a share above zero), 0%."""
    pct = 100 * share
    if pct == 0:
        return "0%"
    return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def verdict_sentence(
    d: Comparison, what: str = "the best recipe", against: str = "the baseline", budget: str = ""
) -> str:
    """The paired comparison (what minus against) in one sentence whose words follow its CI; budget
    (budget_words) says, in the same sentence, where the two were trained for different budgets."""
    i = d.improvement
    numbers = (
        f"{signed(d.mae_diff_months, 2)} months (95% CI {signed(d.ci_low, 2)} to {signed(d.ci_high, 2)}; "
        f"not better in {percent(d.p_a_not_better)} of resamples; P(improvement) {i.p:.2f}, "
        f"95% CI {i.ci_low:.2f} to {i.ci_high:.2f})"
    )
    v = d.verdict
    if v == "better":
        return f"{what} is better than {against}{budget}: {numbers}"
    if v == "worse":
        return f"{what} is worse than {against}{budget}: {numbers}"
    if v == "undetermined":
        return (
            f"{what} minus {against}{budget}: {numbers}; no verdict with one seed per recipe, since the CI "
            "cannot see the seed-to-seed spread (retrain with --seeds 3)"
        )
    return f"no significant difference between {what} and {against}{budget}: {numbers}"


BUDGET_FIELDS = (("epochs", "epochs"), ("image_size", "px"))


def _configs(r: RetrainResult, name: str) -> list[dict[str, Any]]:
    """The configs a recipe of a retrain trained: the best's, every top-k member's, the baseline's."""
    if name.startswith("ensemble"):
        return [m.config for m in r.members]
    if name.startswith("best"):
        return [r.members[0].config] if r.members else [r.recipes["best"].config or {}]
    return [r.recipes[name].config or {}]


def _span(values: list) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]} to {values[-1]}"


def budget_words(r: RetrainResult, a: str, b: str) -> str:
    """' (trained for different budgets: 2 against 5 epochs)' where recipe a trained for another budget
    than b (epochs, image size; every recipe of a retrain trains on the same images), else ''. A
    verdict between two budgets compares recipe and budget at once: the sentence must say so."""
    parts = []
    for field, unit in BUDGET_FIELDS:
        x = sorted({c.get(field) for c in _configs(r, a)} - {None})
        y = sorted({c.get(field) for c in _configs(r, b)} - {None})
        if x and y and x != y:
            parts.append(f"{_span(x)} against {_span(y)} {unit}")
    return f" (trained for different budgets: {', '.join(parts)})" if parts else ""


def comparison_sentence(r: RetrainResult, a: str, b: str, d: Comparison) -> str:
    """Recipe a minus recipe b of a retrain as the verdict sentence, naming both as every view does and
    saying where their training budgets differ."""
    what = "the best recipe" if a == "best" else f"the {recipe_name(a, r)}"
    return verdict_sentence(d, what, f"the {recipe_name(b, r)}", budget_words(r, a, b))


def recipe_label(name: str, r: RetrainResult) -> str:
    """A recipe as tables name it: with the trial or trials it comes from."""
    if name.startswith("best"):
        return f"{recipe_name(name, r)} (trial {r.best_trial})"
    if name.startswith("ensemble"):
        return f"{recipe_name(name, r)} (trials {', '.join(str(m.trial) for m in r.members)})"
    return recipe_name(name, r)


def comparison_lines(r: RetrainResult) -> list[str]:
    """Every paired comparison beyond the verdict (top-k ensemble, bias correction), a sentence each."""
    lines = []
    for key, d in r.comparisons.items():
        a, b = key.split("_minus_")
        lines.append(capital(comparison_sentence(r, a, b, d)))
    return lines


def correction_lines(r: RetrainResult) -> list[str]:
    """Each bias correction's line, fitted on its trials' val predictions."""
    lines = []
    for name, c in r.bias_correction.items():
        lines.append(
            f"bias correction of the {recipe_name(name, r)}: corrected = {c.slope:.3f} x predicted "
            f"{signed(c.intercept, 2)} months, fitted on the val predictions of "
            f"{'trials' if len(c.trials) > 1 else 'trial'} "
            f"{', '.join(map(str, c.trials))} ({c.n} images none of them trained on)"
        )
    return lines


def format_params(params: dict[str, Any], sep: str = " = ") -> str:
    """'lr = 0.00116, batch_size = 32': a trial's parameters, floats to 3 significant digits."""
    return ", ".join(f"{k}{sep}{v:.3g}" if isinstance(v, float) else f"{k}{sep}{v}" for k, v in params.items())


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def val_comparison(best: float, seed_mae: list[float]) -> str:
    """The best trial against the baseline on val: the sign said in words, and where the best lies
    in the baseline's own spread (one trial is one seed, so this is no verdict)."""
    mean = float(np.mean(seed_mae))
    pct = 100 * (best / mean - 1)
    words = f"{abs(pct):.1f}% {'lower' if pct < 0 else 'higher'} than the baseline's mean"
    if len(seed_mae) < 2:
        return words + " (one seed of the baseline: its spread is unknown)"
    lo, hi = min(seed_mae), max(seed_mae)
    if best < lo:
        where = f"below all {len(seed_mae)} of its seeds ({lo:.2f} to {hi:.2f})"
    elif best > hi:
        where = f"above all {len(seed_mae)} of its seeds ({lo:.2f} to {hi:.2f})"
    else:
        where = f"inside the range of its {len(seed_mae)} seeds ({lo:.2f} to {hi:.2f})"
    return f"{words}, {where}"


def recipe_line(name: str, out: RetrainResult) -> str:
    r, seeds = out.recipes[name], out.seeds
    m = r.mae
    spread = f", SD {m.sd:.2f} over {seeds} seeds ({format_seeds(r.mae_per_seed)})" if seeds > 1 else ""
    ci = "seeds and images" if seeds > 1 else "images only"
    return (
        f"{recipe_label(name, out)}: test MAE {m.mean:.2f} months{spread}; 95% CI {m.ci_low:.2f} to "
        f"{m.ci_high:.2f} ({ci})"
    )


def reselection_line(r: RetrainResult) -> str | None:
    """retrain --reselect in one line: the choice, whether it changed the single-seed pick, each candidate."""
    c = r.reselection
    if c is None:
        return None
    chosen = next(x for x in c.candidates if x.trial == c.chosen)
    how = f"instead of the single-seed pick, trial {c.single_seed_pick}" if c.changed else "the single-seed pick kept"
    each = "; ".join(f"trial {x.trial} {pm(x.val.mean, x.val.sd)}" for x in c.candidates)
    return (
        f"noise-aware choice: trial {c.chosen}, val MAE {pm(chosen.val.mean, chosen.val.sd)} months over "
        f"{plural(len(c.seeds), 'fresh seed')}, {how} (candidates on val: {each}; {c.wall_time_s:.0f} s)"
    )


def retrain_lines(out: RetrainResult) -> list[str]:
    """What retrain prints at its end (the noise-aware choice is printed as it is made): each recipe,
    the baseline as the original project evaluated it, the verdict, then the ensemble's and the bias
    corrections' comparisons."""
    lines = [recipe_line(n, out) for n in out.recipes]
    without_bn = out.recipes["baseline"].without_bn_reestimation
    if without_bn is not None:
        lines.append(
            f"{recipe_name('baseline', out)} evaluated as the original project did (no batch-norm re-estimation): "
            f"{without_bn.mean:.2f} months"
        )
    if out.baseline_modified:
        lines.append(f"modified baseline: {describe_changes(out.baseline_modified)}")
    if out.overrides.get("best"):
        lines.append(f"best recipe changed for this retrain: {describe_changes(out.overrides['best'])}")
    lines.append(
        capital(comparison_sentence(out, "best", "baseline", out.best_minus_baseline))
        + f", on the same {out.n_test} test images"
    )
    if out.best_minus_baseline_tta_flip is not None:
        lines.append("With flip TTA: " + comparison_sentence(out, "best", "baseline", out.best_minus_baseline_tta_flip))
    return lines + [capital(line) for line in correction_lines(out)] + comparison_lines(out)
