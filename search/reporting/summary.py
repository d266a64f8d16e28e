"""The report's words and tables as blocks (search.reporting.document), built from a study's summary: the
verdict, the validation and final-test tables, the settings and the commands. summary.md and the
dashboard note write them as Markdown, index.html as HTML, so both say the same."""

from __future__ import annotations

from typing import Any

from search.reporting.axes import signed
from search.reporting.budget import expected_best_words
from search.reporting.document import Block, Heading, bold, bullets, code, para, plural, table
from search.reporting.figures import GROUPS, recipe_name
from search.reporting.words import (
    capital,
    comparison_lines,
    comparison_sentence,
    correction_lines,
    duration,
    format_params,
    format_seeds,
    pm,
    recipe_label,
)
from search.storage.results import Comparison, RetrainResult
from search.storage.settings import describe_changes, plain


def summary_blocks(s: dict[str, Any]) -> list[Block]:
    """The whole report, figures aside."""
    t = s["trials"]
    target = f" (target {s['target_trials']})" if s.get("target_trials") else ""
    blocks: list[Block] = [Heading(1, f"Study {s['study']}"), verdict_block(s)]
    blocks.append(
        para(
            f"Trials: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed{target}; "
            f"{plural(s['epochs_trained'], 'epoch')} trained in {duration(s['search_wall_time_s'])}."
        )
    )
    blocks += val_section(s) + (test_section(s["test"]) if s["test"] else [])
    return blocks + _settings_section(s) + _provenance_section(s)


def verdict_block(s: dict[str, Any]) -> Block:
    r = s["test"]
    if r:
        return para(
            bold("Verdict"),
            f" (final test, {plural(r.seeds, 'seed')} per recipe): "
            f"{comparison_sentence(r, 'best', 'baseline', r.best_minus_baseline)}." + stale_words(s),
        )
    return para("No final test yet: ", code(s["hint"]), " gives the verdict.")


def stale_words(s: dict[str, Any]) -> str:
    """Where the search found a better trial after the final test: which trial the test scored."""
    best = s.get("best", {}).get("trial")
    if s["test"] is None or best is None or best == s["test"].searched_best:
        return ""
    return (
        f" The final test scored trial {s['test'].best_trial}; the search has since found trial {best}: "
        "retrain to test it."
    )


def val_section(s: dict[str, Any]) -> list[Block]:
    base = s.get("baseline")
    if "best" not in s and not base:
        return []
    rows = []
    if base:
        per_seed = base.val_mae_per_seed
        rows.append(["mean predictor (training mean for everyone)", pm(base.mean_predictor_val_mae_months, None)])
        rows += [[f"baseline, seed {k}", f"{v:.2f}"] for k, v in enumerate(per_seed)]
        rows.append(
            [f"baseline, mean ± SD over {_count(len(per_seed), 'seed')}", pm(base.val_mae_months, base.val_mae_sd)]
        )
    if "best" in s:
        rows.append([f"best trial ({s['best']['trial']}), one seed", pm(s["best"]["val_mae_months"], None)])
    if s.get("noise_floor_val_mae_months"):
        rows.append(["label noise floor (phantom: no model can expect less)", f"{s['noise_floor_val_mae_months']:.2f}"])
    blocks: list[Block] = [Heading(2, "Search (validation split)"), table(["", "val MAE (months)"], rows)]
    if "best" in s:
        blocks.append(para(f"Best parameters: {format_params(s['best']['params'])}."))
        if "vs_baseline_val" in s["best"]:
            blocks.append(
                para(
                    f"On val the best trial is {s['best']['vs_baseline_val']}. A trial is one seed picked as the "
                    "lowest of many, so val says where to look, not whether the recipe is better: the final test "
                    "below does."
                )
            )
    if s.get("budget"):
        blocks.append(para(expected_best_words(s["budget"])))
    return blocks


def test_section(r: RetrainResult) -> list[Block]:
    """The final test: what was trained and scored, the table, the comparison, MAE by group."""
    intro = para(
        f"{r.n_test} test images, {plural(r.seeds, 'seed')} per recipe, every recipe trained on the same "
        f"{r.n_trainval} images and scored on the same test images. Every column is the mean over seeds ± the SD over "
        "seeds; the MAE's 95% CI is a two-stage bootstrap (seeds, then test images). Evaluation, the same "
        "for every recipe: batch-norm statistics re-estimated on un-augmented training images, no "
        "test-time augmentation."
    )
    header = [
        "recipe",
        "MAE (months)",
        "95% CI",
        "MAE per seed",
        "RMSE",
        "bias",
        "R²",
        "within 6 / 12 mo (%)",
        "training (s)",
    ]
    return [
        *reselection_blocks(r),
        Heading(2, "Final test (retrained on train+val)"),
        intro,
        table(header, _recipe_rows(r)),
        *_comparison_notes(r),
        *_group_table(r),
    ]


def reselection_blocks(r: RetrainResult) -> list[Block]:
    """retrain --reselect: each candidate's seed mean on val, and whether the single-seed pick changed."""
    c = r.reselection
    if c is None:
        return []
    seeds = ", ".join(map(str, c.seeds))
    chosen = next(x for x in c.candidates if x.trial == c.chosen)
    if c.changed:
        outcome = (
            f"The choice changed: trial {c.chosen} ({format_params(chosen.params)}) replaces the single-seed "
            f"pick, trial {c.single_seed_pick}."
        )
    else:
        outcome = f"The single-seed pick, trial {c.single_seed_pick}, kept its place."
    if r.overrides.get("best"):
        outcome += (
            f" The candidates trained with this retrain's change ({describe_changes(r.overrides['best'])}), so "
            "their seed means are not the search's recipe: the two val columns differ by that change too."
        )
    header = ["trial", "search rank", "val MAE, search (one seed)", "val MAE, seed mean ± SD", "95% CI", "per seed"]
    rows = [
        [
            f"{x.trial} (chosen)" if x.trial == c.chosen else str(x.trial),
            str(x.search_rank),
            f"{x.val_mae_months:.2f}",
            pm(x.val.mean, x.val.sd),
            f"{x.val.ci_low:.2f} to {x.val.ci_high:.2f}",
            format_seeds(x.val_mae_per_seed),
        ]
        for x in c.candidates
    ]
    return [
        Heading(2, "Final choice through the seed noise (validation split)"),
        para(
            f"The search's pick is the lowest of many single-seed val MAEs, so it is biased low and partly luck. "
            f"The {len(c.candidates)} best distinct configurations were each trained on the train split with "
            f"{plural(len(c.seeds), 'fresh seed')} ({seeds}; the trials' own seed left out) and scored on val only, "
            f"the test images untouched; the lowest seed-mean val MAE goes to the final test. {outcome} "
            f"This cost {c.wall_time_s:.0f} s on {c.device}. The CI is a two-stage bootstrap over seeds, then "
            "val images."
        ),
        table(header, rows),
    ]


def _recipe_rows(r: RetrainResult) -> list[list[str]]:
    """One row per recipe: every column the mean over seeds ± the SD over seeds."""
    rows = []
    for name, e in r.recipes.items():
        m, sd = e.metrics_mean, e.metrics_sd
        rows.append(
            [
                recipe_label(name, r),
                pm(e.mae.mean, e.mae.sd),
                f"{e.mae.ci_low:.2f} to {e.mae.ci_high:.2f}",
                format_seeds(e.mae_per_seed),
                pm(m["rmse_months"], sd["rmse_months"]),
                pm(m["bias_months"], sd["bias_months"]),
                pm(m["r2"], sd["r2"], 3),
                f"{pm(m['within_6_months_pct'], sd['within_6_months_pct'], 0)} / "
                f"{pm(m['within_12_months_pct'], sd['within_12_months_pct'], 0)}",
                _training_time(name, r),
            ]
        )
    return rows


def _training_time(name: str, r: RetrainResult) -> str:
    """A recipe's training wall time over its seeds: the ensemble's is its members' (the best's among
    them); a bias correction trains nothing beyond the models it corrects."""
    if name.endswith("_corrected"):
        return f"as the {recipe_name(name.removesuffix('_corrected'), r)}"
    seconds = r.recipes[name].wall_time_s
    return "n/a" if seconds is None else f"{seconds:.0f}"


def _comparison_notes(r: RetrainResult) -> list[Block]:
    """The paired comparison, the seed ensembles, flip TTA, the original project's own evaluation, any changes."""
    d, seed = r.best_minus_baseline, recipe_name("baseline", r)
    blocks: list[Block] = [
        para(
            f"Best minus {seed}, paired on the same images with each recipe's seeds resampled: "
            f"{comparison_sentence(r, 'best', 'baseline', d)}. P(improvement) is the probability that a model "
            "trained with a new seed of the best recipe has a lower test MAE than one of the "
            f"{seed}: the share of seed pairs where it does, with a bootstrap CI over seeds and images."
        )
    ]
    if d.resolvable_months:
        blocks.append(seeds_needed(r, d))
    ens, e = d.ensembles, {k: v.seed_ensemble for k, v in r.recipes.items()}
    if r.seeds > 1:
        blocks.append(
            para(
                f"Seed ensembles (each recipe's {r.seeds} seed predictions averaged into one model, a different "
                f"model from any single seed): best {e['best']['mae_months']:.2f}, {seed} "
                f"{e['baseline']['mae_months']:.2f} months; difference {signed(ens.mae_diff_months, 2)} (95% CI over "
                f"images {signed(ens.ci_low, 2)} to {signed(ens.ci_high, 2)})."
            )
        )
    if r.best_minus_baseline_tta_flip is not None:
        best, base = r.recipes["best"].tta_flip, r.recipes["baseline"].tta_flip
        blocks.append(
            para(
                f"With test-time flip averaging (both recipes): best {pm(best.mean, best.sd)}, {seed} "
                f"{pm(base.mean, base.sd)} months; "
                f"{comparison_sentence(r, 'best', 'baseline', r.best_minus_baseline_tta_flip)}."
            )
        )
    without_bn = r.recipes["baseline"].without_bn_reestimation
    if without_bn:
        ours = r.recipes["baseline"].mae
        blocks.append(
            para(
                f"The {seed} evaluated as the original project did (batch-norm statistics from training, not "
                f"re-estimated): {pm(without_bn.mean, without_bn.sd)} months, against {pm(ours.mean, ours.sd)} "
                "with this project's protocol."
            )
        )
    blocks += _ensemble_notes(r)
    if r.baseline_modified:
        changes = describe_changes(r.baseline_modified)
        blocks.append(para(bold("Modified baseline"), f" (retrain --set baseline.*): {changes}."))
    if r.overrides.get("best"):
        blocks.append(para(f"Best recipe changed for this retrain: {describe_changes(r.overrides['best'])}."))
    return blocks


def seeds_needed(r: RetrainResult, d: Comparison) -> Block:
    """How small a difference the verdict's seeds can resolve, and what more seeds would."""
    here = d.resolvable_months[str(r.seeds)]
    counts = {k: v for k, v in d.resolvable_months.items() if k.isdigit() and int(k) != r.seeds}
    more = ", ".join(f"{k} seeds {v:.2f}" for k, v in counts.items())
    floor = d.resolvable_months.get("unlimited")
    if floor is not None:
        more += f"; unlimited seeds {floor:.2f} (the test images' own spread: below it only more test images help)"
    observed = (d.ci_high - d.ci_low) / 2
    return para(
        f"Seeds needed: from the spread measured here (each recipe's SD over seeds and the images' spread, in a "
        f"normal approximation), {r.seeds} seeds a recipe resolve a difference of about {here:.2f} months (the "
        f"95% CI's half-width; the bootstrap CI above is ± {observed:.2f}, wider where few seeds make the SDs "
        f"rough); {more}. A true difference smaller than that is likely to read as no significant difference; ",
        code("retrain --seeds K"),
        " trains more (the seeds already trained are read from their checkpoints).",
    )


def _ensemble_notes(r: RetrainResult) -> list[Block]:
    """The top-k ensemble's members, the bias corrections, and every comparison they bring."""
    blocks: list[Block] = []
    if r.top_k > 1:
        order = " (ranked in the noise-aware choice's order)" if r.reselection else ""
        blocks.append(
            para(
                f"The top-{r.top_k} ensemble averages, for each seed k, the seed-k models of the {r.top_k} best "
                "distinct configurations of the search, each retrained like the best; its CIs resample its seeds "
                f"(sets of models) and the test images like any recipe's. Its members{order}:"
            )
        )
        header = ["rank", "trial", "val MAE (months, one seed)", "test MAE (months)", "parameters"]
        rows = [
            [str(m.rank), str(m.trial), f"{m.val_mae_months:.2f}", pm(m.mae.mean, m.mae.sd), format_params(m.params)]
            for m in r.members
        ]
        blocks.append(table(header, rows))
    corrections = correction_lines(r)
    if corrections:
        blocks.append(
            para(
                "Bias correction, a line fitted on held-out val predictions against the shrinkage of predictions "
                "toward the mean age (as Deeplasia does); the test images play no part in it:"
            )
        )
        blocks.append(bullets(*[f"{capital(c)}." for c in corrections]))
    compared = comparison_lines(r)
    if compared:
        blocks += [
            para("Paired on the same images, each side's seeds resampled:"),
            bullets(*[f"{c}." for c in compared]),
        ]
    return blocks


def _group_table(r: RetrainResult) -> list[Block]:
    names = list(r.recipes)
    rows = [
        [label, str(r.group_n[key])]
        + [pm(r.recipes[n].metrics_mean[metric], r.recipes[n].metrics_sd[metric]) for n in names]
        for metric, key, label in GROUPS
    ]
    return [
        para(f"MAE by group (months, mean ± SD over {plural(r.seeds, 'seed')}; n = test images in the group):"),
        table(["group", "n", *(recipe_name(n, r) for n in names)], rows),
    ]


def _settings_section(s: dict[str, Any]) -> list[Block]:
    settings = s.get("settings")
    if not settings:
        return []
    data = ", ".join(f"{k} {v}" for k, v in settings["data"].items())
    skipped = s.get("skipped_images") or {}
    listed = ", ".join(f"{k} ({why})" for k, why in list(skipped.items())[:5]) + (", ..." if len(skipped) > 5 else "")
    items = [f"data: {data}; fingerprint {settings.get('data_fingerprint')}"]
    if skipped:
        items.append(f"skipped images ({len(skipped)}, all in summary.json): {listed}")
    items += [
        f"fixed training fields: {_fields(settings['train'])}",
        f"baseline: {_fields(settings['baseline'])}",
        f"searched: {', '.join(settings['space']) or 'nothing'}",
        f"sampler: {_fields(settings['sampler'])}; pruner: {_fields(settings['pruner'])}",
    ]
    return [Heading(2, "Settings (stored in the study when it was created)"), bullets(*items)]


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _fields(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {plain(v)}" for k, v in d.items())


def _provenance_section(s: dict[str, Any]) -> list[Block]:
    from search.reporting.document import CodeBlock

    commands = s.get("commands") or []
    typed = [c["command"] for c in commands] + ([s["report_command"]] if s.get("report_command") else [])
    blocks: list[Block] = [
        Heading(2, "How this was produced"),
        para("The commands recorded in the study, as typed, then this report's:"),
        CodeBlock(tuple(typed)),
    ]
    if commands:
        last = commands[-1]
        blocks.append(
            para(
                f"Last command {last['started_utc']}: boneage-search {last.get('boneage_search')} "
                f"(commit {last.get('git_commit') or 'unknown'}), Python {last['python']}, torch {last['torch']}, "
                f"optuna {last['optuna']}, on {last['device']}."
            )
        )
    times = [f"training inside trials {duration(s['search_wall_time_s'])}"]
    if s["baseline"]:
        times.append(f"baseline on val {s['baseline'].wall_time_s:.0f} s")
    if s["test"] and s["test"].reselection:
        times.append(f"noise-aware choice {s['test'].reselection.wall_time_s:.0f} s")
    if s["test"]:
        r = s["test"]
        for n, e in r.recipes.items():
            if e.wall_time_s is None:
                continue
            if n == "ensemble":  # the sum of its members' training, the best's among them: said, not added again
                members = plural(len(r.members), "member")
                times.append(f"retrain {recipe_name(n, r)} {e.wall_time_s:.0f} s (its {members}, the best's included)")
            else:
                times.append(f"retrain {recipe_name(n, r)} {e.wall_time_s:.0f} s")
    c = s.get("compute")
    where = ""
    if c and c["devices"]:
        verbs: dict[str, list[str]] = {}
        for verb, devices in c["devices"].items():
            for device in devices:
                verbs.setdefault(device, []).append(verb)
        where = "; on " + "; ".join(f"{device} ({', '.join(v)})" for device, v in verbs.items())
    total = f" In all {duration(c['total_s'])} of training{where}." if c else ""
    return [*blocks, para("Wall times: " + ", ".join(times) + "." + total)]
