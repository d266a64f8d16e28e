"""Views of a study: the status text now; tables and figures in results/<study>/ as they land."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState


def status_text(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {study.study_name}: {len(trials)} trials: "
             + ", ".join(f"{n} {s}" for s, n in by_state.items() if n)]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        lines.append(f"best: trial {best.number}, val MAE {best.value:.2f} months ({params})")
    else:
        lines.append("best: no completed trial yet")
    base = study.user_attrs.get("baseline")
    if base:
        lines.append(f"baseline (seed recipe): val MAE {base['val_mae_months']:.2f} months")
        if done:
            lines.append(f"best vs baseline: {100 * (1 - study.best_value / base['val_mae_months']):.1f}% lower MAE")
    else:
        lines.append("baseline: not run yet (python -m search baseline)")
    spent = sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in trials)
    epochs = sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)
    lines.append(f"time spent training: {spent / 60:.1f} min over {epochs} epochs")
    return "\n".join(lines)
