"""Does a rerun of the demo reproduce the committed one? Compare a rerun's study with
results/demo/trials.csv, trial by trial (state, val MAE, wall time), and, where the rerun also ran
baseline and retrain, its stored results with results/demo/summary.json (the baseline's val MAE
per seed, every recipe's test MAE, the verdict's difference); write the comparison.

    python scripts/demo_rerun.py RERUN_DIR --install-s 97 --run-s 1511 --commit a00d2d6

RERUN_DIR holds studies/demo.db of `python -m search run --trials 50` run in a fresh clone; the
install and run times are those the person measured, recorded as given. --setup describes a rerun
made otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from pathlib import Path

import optuna
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
FRESH_CLONE = (
    "`python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m search run --trials 50` "
    "in a new clone with a new cache directory, on this repository's 2-core machine"
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rerun_dir", type=Path)
    p.add_argument("--install-s", type=float, help="the install's seconds, where one was measured")
    p.add_argument("--run-s", type=float, required=True)
    p.add_argument("--commit", required=True, help="the commit the rerun was made at")
    p.add_argument("--out", type=Path, default=REPO / "results" / "demo" / "rerun.md")
    p.add_argument("--title", default="The demo search rerun from a fresh clone")
    p.add_argument("--setup", default=FRESH_CLONE, help="how the rerun was made (default: a fresh clone)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{args.rerun_dir / 'studies' / 'demo.db'}")
    old = pd.read_csv(REPO / "results" / "demo" / "trials.csv").set_index("number")
    trials = [t for t in study.trials if t.number in old.index]
    same = len(trials) == len(old) and all(
        t.state.name == old.loc[t.number, "state"]
        and (t.value is None or abs(t.value - old.loc[t.number, "val_mae_months"]) < 0.005)
        for t in trials
    )
    ratios = [t.user_attrs["wall_time_s"] / old.loc[t.number, "wall_time_s"] for t in trials]
    states = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    today = datetime.date.today().isoformat()
    installed = f"install {args.install_s:.0f} s; " if args.install_s is not None else ""
    lines = [
        f"# {args.title} (commit {args.commit}), {today}",
        "",
        f"{args.setup}, compared with the committed run (`trials.csv` and `summary.json` beside this file) by "
        f"`python scripts/demo_rerun.py {shlex.join(argv)}`.",
        "",
        f"- {installed}run {args.run_s:.0f} s ({args.run_s // 60:.0f} min {args.run_s % 60:.0f} s); "
        f"{states.get('COMPLETE', 0)} complete, {states.get('PRUNED', 0)} pruned, {states.get('FAIL', 0)} failed; "
        f"best trial {study.best_trial.number}, val MAE {study.best_value:.2f} months",
        f"- every trial's state and val MAE as in the committed run: {'yes' if same else 'no'}",
        f"- a trial's wall time over the committed run's: median {statistics.median(ratios):.2f}, range "
        f"{min(ratios):.2f} to {max(ratios):.2f}; training in all "
        f"{sum(t.user_attrs['wall_time_s'] for t in trials):.0f} s against {old['wall_time_s'].sum():.0f} s",
        *_results(study, REPO / "results" / "demo" / "summary.json"),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())
    return 0


def _same(a: list[float], b: list[float]) -> str:
    return "yes" if len(a) == len(b) and all(abs(x - y) < 0.005 for x, y in zip(a, b, strict=True)) else "no"


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _results(study: optuna.Study, committed: Path) -> list[str]:
    """The rerun's stored baseline and final test against the committed summary.json, where both are."""
    from search.storage.results import load_baseline, load_retrain

    old = json.loads(committed.read_text())
    base, test = load_baseline(study), load_retrain(study)
    lines = []
    if base is not None and old.get("baseline"):
        was, now = old["baseline"]["val_mae_per_seed"], base.val_mae_per_seed
        same = _same(was, now)
        lines.append(f"- baseline, val MAE per seed: {_fmt(now)} (committed {_fmt(was)}); the same: {same}")
    if test is not None and old.get("test"):
        names = list(test.recipes)
        was = [old["test"]["recipes"].get(n, {}).get("mae", {}).get("mean", float("nan")) for n in names]
        now = [test.recipes[n].mae.mean for n in names]
        d_was, d = old["test"]["best_minus_baseline"], test.best_minus_baseline
        triple_was = [d_was["mae_diff_months"], d_was["ci_low"], d_was["ci_high"]]
        lines += [
            f"- final test MAE ({', '.join(names)}): {_fmt(now)} (committed {_fmt(was)}); the same: {_same(was, now)}",
            f"- best minus baseline: {d.mae_diff_months:+.2f} months, 95% CI {d.ci_low:+.2f} to {d.ci_high:+.2f}, "
            f"{d.verdict} (committed {d_was['mae_diff_months']:+.2f}, {d_was['ci_low']:+.2f} to "
            f"{d_was['ci_high']:+.2f}, {d_was['verdict']}); the same: "
            f"{_same(triple_was, [d.mae_diff_months, d.ci_low, d.ci_high])}",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
