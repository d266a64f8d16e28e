"""Does a rerun of the demo search reproduce the committed one? Compare a rerun's study with
results/demo/trials.csv, trial by trial (state, val MAE, wall time), and write the comparison.

    python scripts/demo_rerun.py RERUN_DIR --install-s 97 --run-s 1511 --commit a00d2d6

RERUN_DIR holds studies/demo.db of `python -m search run --trials 50` run in a fresh clone; the
install and run times are those the person measured, recorded as given.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import optuna
import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rerun_dir", type=Path)
    p.add_argument("--install-s", type=float, required=True)
    p.add_argument("--run-s", type=float, required=True)
    p.add_argument("--commit", required=True, help="the commit the rerun was made at")
    p.add_argument("--out", type=Path, default=REPO / "results" / "demo" / "rerun.md")
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
    lines = [
        f"# The demo search rerun from a fresh clone (commit {args.commit}), {today}",
        "",
        "`python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m search run --trials 50` "
        "in a new clone with a new cache directory, on this repository's 2-core machine, compared with the "
        "committed run (`trials.csv` beside this file) by "
        f"`python scripts/demo_rerun.py {' '.join(argv)}`.",
        "",
        f"- install {args.install_s:.0f} s; run {args.run_s:.0f} s "
        f"({args.run_s // 60:.0f} min {args.run_s % 60:.0f} s); "
        f"{states.get('COMPLETE', 0)} complete, {states.get('PRUNED', 0)} pruned, {states.get('FAIL', 0)} failed; "
        f"best trial {study.best_trial.number}, val MAE {study.best_value:.2f} months",
        f"- every trial's state and val MAE as in the committed run: {'yes' if same else 'no'}",
        f"- a trial's wall time over the committed run's: median {statistics.median(ratios):.2f}, range "
        f"{min(ratios):.2f} to {max(ratios):.2f}; training in all "
        f"{sum(t.user_attrs['wall_time_s'] for t in trials):.0f} s against {old['wall_time_s'].sum():.0f} s",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
