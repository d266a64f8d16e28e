"""Benchmark 3, search efficiency on the embedded default: TPE with pruning against TPE without it
(epochs saved, best val MAE kept), and against random search given the same number of epochs, each
arm run with several sampler seeds.

One search is one draw: a sampler seed changes which configurations it tries, and so its best. The
claims are stated as the verdicts are: per seed, then the mean with a 95% t-interval over the sampler
seeds (paired by seed where two arms are compared), and "met" only where that interval supports the
target. The curves of best-so-far against epochs (mean and range over seeds) go to
search_efficiency.html (and .png where kaleido can draw), with Dodge's expected best for random
search over the random arm's pooled trials.

Each sampler seed's arms live in a study file of their own (search-s<seed>.db in the work directory):
with `bench --work DIR` a rerun reads back the arms that finished instead of training them again,
and `--search-jobs J` runs J seeds at once, each process on its own share of the cores."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy import stats

from boneage_core.metrics import expected_best
from search.bench.common import Sizes, section
from search.config.specs import load_spec
from search.engine.run import run_study, stop_on_signals
from search.engine.workers import usable_cores
from search.storage.study import open_storage, open_study

ARMS = ("tpe_pruned", "tpe_unpruned", "random_equal_epochs")


def _finished_before(name: str, url: str) -> int:
    """How many finished trials the arm's study held before this run (0 where there is none yet). A
    damaged or foreign file in --work is one line naming it (open_storage checks it), never touched."""
    if not Path(url.removeprefix("sqlite:///")).is_file():
        return 0
    storage = open_storage(url, create=False)
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return 0
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _search(overrides: list[str], url: str, n_trials: int) -> dict:
    spec = load_spec("demo", overrides)
    before = _finished_before(spec.name, url)
    run_study(spec, url, n_trials, quiet=True)
    trials = open_study(spec, url, heartbeat=False).get_trials(deepcopy=False)
    held = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # an arm from an earlier, longer run with the same --work counts its first n_trials: what a run of
    # n_trials would have found, and the same budget as the other arms
    done = held[:n_trials]
    if len(held) > n_trials:
        trials = [t for t in trials if t.number <= done[-1].number]
    # the arm's trials' own durations, added up: the same figure whether they ran now or in an earlier
    # run with the same --work, and no pause between two runs of a resumed arm counted
    wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    complete = [t.value for t in done if t.state == TrialState.COMPLETE]
    epochs = [int(t.user_attrs.get("epochs_run", 0)) for t in done]
    best, curve = float("inf"), []
    for t in done:  # the best complete trial so far, after each finished trial
        if t.state == TrialState.COMPLETE:
            best = min(best, t.value)
        curve.append(None if best == float("inf") else round(best, 3))
    return {
        "trials": len(done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "epochs": sum(epochs),
        "best_val_mae": round(min(complete), 3) if complete else None,
        "wall_s": round(wall, 1),
        "epochs_per_trial": spec.train.epochs,
        "curve_epochs": np.cumsum(epochs).tolist(),
        "curve_best": curve,
        "complete_values": [round(v, 3) for v in complete],
        "read_back": min(before, n_trials),
        "held": len(held),
    }


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-interval over independent draws (sampler seeds); with one draw, no interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _spread(values: list[float], fmt: str = "{:+.1%}") -> str:
    mean, lo, hi = t_interval(values)
    span = f"{fmt.format(min(values))} to {fmt.format(max(values))}"
    if len(values) < 2:
        return f"{fmt.format(mean)} (one sampler seed: no spread)"
    return f"mean {fmt.format(mean)} (per seed {span}; 95% CI {fmt.format(lo)} to {fmt.format(hi)})"


def bench_search_efficiency(sizes: Sizes, work: Path, out: Path | None = None, **_) -> dict:
    s = section(
        "Search efficiency on the embedded default",
        "pruning saves at least 50% of epochs with best val MAE within 5% of the unpruned search; "
        "TPE + pruning reaches a lower MAE than random search at an equal epoch budget; each over the "
        "sampler seeds, with a 95% CI that must support it",
    )
    n = sizes.search_trials
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    more: list[str] = []  # arms whose study holds more trials than this run counts
    for seed, arms in zip(sizes.search_seeds, _all_seeds(sizes, work), strict=True):
        for arm in ARMS:
            held = arms[arm].pop("held")
            if held > arms[arm]["trials"]:
                more.append(f"{arm} seed {seed} ({held})")
            runs[arm].append({"sampler_seed": seed, **arms[arm]})
    s["figures"], s["met"], s["measured"] = claims(runs)
    s["curves"] = curves(runs)
    p = sizes.search_override
    pruner = load_spec("demo", list(p)).pruner
    how = (
        f"successive halving (reduction factor {pruner.reduction_factor}, first rung at epoch {pruner.min_resource})"
        if pruner.name == "successive_halving"
        else f"its {pruner.name} pruner"
    )
    walls = {arm: sum(r["wall_s"] for r in runs[arm]) for arm in ARMS}
    jobs = min(sizes.search_jobs, len(sizes.search_seeds), len(usable_cores()))
    read_back = sorted({r["sampler_seed"] for arm in ARMS for r in runs[arm] if r["read_back"]})
    trained = any(r["trials"] > r["read_back"] for arm in ARMS for r in runs[arm])
    s["notes"] = [
        f"{n} trial{'s' if n != 1 else ''} an arm and sampler seed, sampler seeds "
        f"{', '.join(map(str, sizes.search_seeds))}, the demo study (`--set` {' '.join(p) if p else 'none'}): "
        f"TPE with {how}; TPE without pruning; random search "
        "without pruning for as many trials as the epochs TPE + pruning used with the same seed (in trials of "
        f"{runs['tpe_pruned'][0]['epochs_per_trial']} epochs).",
        "Each claim is the mean over sampler seeds with a 95% t-interval (paired by seed between arms): "
        "with few seeds the interval is wide, and a claim it does not support is not met, whatever the mean.",
        f"Wall time, all seeds: TPE + pruning {walls['tpe_pruned']:.0f} s, TPE without pruning "
        f"{walls['tpe_unpruned']:.0f} s, random search {walls['random_equal_epochs']:.0f} s (each arm's trials' "
        "durations added up)"
        + (
            f"; this run trained {jobs} sampler seeds at a time, each process on {_cores_word(jobs)}."
            if jobs > 1 and trained
            else "."
        ),
    ]
    if read_back:
        s["notes"].append(
            f"Read back from the work directory (an earlier run with the same --work): trials of sampler seed(s) "
            f"{', '.join(map(str, read_back))}; an arm that held all its trials was not run again, one that held "
            "some was topped up."
        )
    if more:
        s["notes"].append(
            f"Arms holding more trials than asked, counted up to {n}: {', '.join(more)} (an earlier, longer run)."
        )
    if out is not None:
        s["files"] = curve_figure(s["curves"], out)
    return s


def _seed_arms(seed: int, base: list[str], n: int, work: Path) -> dict[str, dict]:
    """The three arms for one sampler seed, in a study file of the seed's own."""
    url = f"sqlite:///{work / f'search-s{seed}.db'}"
    seeded = [*base, f"sampler.seed={seed}"]
    tpe = _search([*seeded, f"study.name=bench-tpe-pruned-s{seed}"], url, n)
    unpruned = _search([*seeded, f"study.name=bench-tpe-unpruned-s{seed}", "pruner.name=none"], url, n)
    n_random = max(1, round(tpe["epochs"] / tpe["epochs_per_trial"]))
    random_arm = [*seeded, f"study.name=bench-random-s{seed}", "pruner.name=none", "sampler.name=random"]
    return dict(zip(ARMS, (tpe, unpruned, _search(random_arm, url, n_random)), strict=True))


def core_shares(cores: list[int], jobs: int) -> list[list[int]]:
    """The cores split into `jobs` disjoint shares as even as they go (each at least one core)."""
    jobs = max(1, min(jobs, len(cores)))
    return [cores[i::jobs] for i in range(jobs)]


def _cores_word(jobs: int) -> str:
    sizes = sorted({len(c) for c in core_shares(usable_cores(), jobs)})
    return " or ".join(map(str, sizes)) + (" core" if sizes == [1] else " cores")


_stop = None  # in a pool process: set by the parent once it is interrupted, so no further seed starts


def _pin(shares, stop) -> None:
    """A pool process takes one share of the cores for its life (run_study then uses that many threads)."""
    global _stop
    _stop = stop
    stop_on_signals()  # Ctrl-C and SIGTERM fail the trial in progress, as in run's workers
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, shares.get())


def _seed_arms_unless_stopped(seed: int, base: list[str], n: int, work: Path) -> dict[str, dict] | None:
    return None if _stop is not None and _stop.is_set() else _seed_arms(seed, base, n, work)


def _stop_children(pool: ProcessPoolExecutor, stop, wait_s: float = 60) -> None:
    """The parent was interrupted: no further seed starts, each pool process gets SIGINT (its trial is
    failed, so a rerun with --work retries it) and ends; one left after wait_s is killed."""
    stop.set()
    children = multiprocessing.active_children()
    pool.shutdown(wait=False, cancel_futures=True)
    for child in children:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(child.pid, signal.SIGINT)
    deadline = time.monotonic() + wait_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()


def _all_seeds(sizes: Sizes, work: Path) -> list[dict[str, dict]]:
    """Every sampler seed's arms: one after another, or `search_jobs` seeds at once in processes of
    their own, each pinned to its share of the cores and using as many threads."""
    base, n, seeds = list(sizes.search_override), sizes.search_trials, sizes.search_seeds
    jobs = min(sizes.search_jobs, len(seeds), len(usable_cores()))
    if jobs <= 1:
        return [_seed_arms(seed, base, n, work) for seed in seeds]
    ctx = multiprocessing.get_context("spawn")  # torch in a forked child can hang
    shares, stop = ctx.Queue(), ctx.Event()
    for share in core_shares(usable_cores(), jobs):
        shares.put(share)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_pin, initargs=(shares, stop)) as pool:
        k = len(seeds)
        try:
            return list(pool.map(_seed_arms_unless_stopped, seeds, [base] * k, [n] * k, [work] * k))
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM to this process alone (kill <pid>)
            _stop_children(pool, stop)
            raise


def claims(runs: dict[str, list[dict]]) -> tuple[dict[str, Any], bool, str]:
    """The figures per seed, the three claims over seeds, whether the CIs support them, and one line."""
    tpe, unpruned, random = (runs[a] for a in ARMS)
    saved = [1 - t["epochs"] / u["epochs"] for t, u in zip(tpe, unpruned, strict=True)]
    have = [
        (t["best_val_mae"], u["best_val_mae"], r["best_val_mae"])
        for t, u, r in zip(tpe, unpruned, random, strict=True)
        if None not in (t["best_val_mae"], u["best_val_mae"], r["best_val_mae"])
    ]
    gap = [t / u - 1 for t, u, _ in have]  # pruned best against unpruned best, same seed
    vs_random = [t - r for t, _, r in have]  # months; negative: TPE + pruning lower
    saved_lo = t_interval(saved)[1]
    gap_hi = t_interval(gap)[2] if gap else float("nan")
    random_hi = t_interval(vs_random)[2] if vs_random else float("nan")
    met_saved = bool(saved_lo >= 0.5)
    met_gap = bool(gap_hi <= 0.05)
    met_random = bool(random_hi < 0)
    words_random = (
        "TPE + pruning lower"
        if met_random
        else "TPE + pruning higher"
        if vs_random and t_interval(vs_random)[1] > 0
        else "no significant difference"
    )
    measured = (
        f"over {len(saved)} sampler seeds: pruning saved {_spread(saved, '{:.0%}')} of epochs; pruned best "
        f"against unpruned best {_spread(gap)}; TPE + pruning minus random search at equal epochs "
        f"{_spread(vs_random, '{:+.2f}')} months ({words_random})"
    )
    keep = ("sampler_seed", "trials", "pruned", "failed", "epochs", "best_val_mae", "wall_s", "read_back")
    figures = {arm: [{k: r[k] for k in keep} for r in runs[arm]] for arm in ARMS}
    figures |= {
        "epochs_saved": [round(v, 3) for v in saved],
        "best_mae_gap_vs_unpruned": [round(v, 4) for v in gap],
        "tpe_minus_random_months": [round(v, 3) for v in vs_random],
        "claims_met": {"epochs_saved": met_saved, "within_5pct": met_gap, "beats_random": met_random},
    }
    return figures, met_saved and met_gap and met_random, measured


def curves(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Best so far against epochs for each arm: per seed as run, and on a common grid the mean and
    range over seeds; Dodge's expected best for random search from the random arm's pooled trials."""
    out: dict[str, Any] = {}
    for arm, rs in runs.items():
        top = max(r["curve_epochs"][-1] for r in rs) if rs and rs[0]["curve_epochs"] else 0
        grid = list(range(1, top + 1))
        rows = []
        for r in rs:
            xs, ys = r["curve_epochs"], r["curve_best"]
            rows.append([_at(xs, ys, g) for g in grid])
        held = [[v for v in col if v is not None] for col in zip(*rows, strict=True)] if rows else []
        out[arm] = {
            "per_seed": [{"epochs": r["curve_epochs"], "best": r["curve_best"]} for r in rs],
            "grid": grid,
            "mean": [round(statistics.fmean(c), 3) if len(c) == len(rs) else None for c in held],
            "low": [min(c) if c else None for c in held],
            "high": [max(c) if c else None for c in held],
        }
    pooled = [v for r in runs["random_equal_epochs"] for v in r["complete_values"]]
    if pooled:
        e = runs["random_equal_epochs"][0]["epochs_per_trial"]
        dodge = expected_best(np.array(pooled))
        out["random_expected"] = {
            "epochs": [int(k * e) for k in dodge["n"]],
            "mean": [round(float(v), 3) for v in dodge["mean"]],
            "sd": [round(float(v), 3) for v in dodge["sd"]],
        }
    return out


def _at(xs: list[int], ys: list[float | None], epoch: int) -> float | None:
    """A best-so-far curve's value once `epoch` epochs were spent (the last trial finished by then)."""
    value = None
    for x, y in zip(xs, ys, strict=True):
        if x > epoch:
            break
        value = y
    return value


NAMES = {
    "tpe_pruned": ("TPE + pruning", "#0072B2"),
    "tpe_unpruned": ("TPE, no pruning", "#009E73"),
    "random_equal_epochs": ("random search", "#E69F00"),
}


def curve_figure(c: dict[str, Any], out: Path) -> list[str]:
    """search_efficiency.html (plotly.min.js beside it) and, where kaleido can draw, a PNG: the files written."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    from search.storage.writes import png_turned_off, write_atomic, write_bytes_atomic

    fig = go.Figure()
    for arm, (name, colour) in NAMES.items():
        a = c[arm]
        edge = dict(mode="lines", line=dict(width=0, color=colour), hoverinfo="skip", showlegend=False)
        fig.add_scatter(x=a["grid"], y=a["low"], **edge)
        fig.add_scatter(x=a["grid"], y=a["high"], fill="tonexty", opacity=0.25, **edge)
        fig.add_scatter(x=a["grid"], y=a["mean"], mode="lines", name=f"{name}: mean over seeds (band: range)",
                        line=dict(color=colour, width=2, shape="hv"))  # fmt: skip
    if "random_expected" in c:
        d = c["random_expected"]
        fig.add_scatter(x=d["epochs"], y=d["mean"], mode="lines", name="random search: expected best (Dodge)",
                        line=dict(color=NAMES["random_equal_epochs"][1], dash="dot"))  # fmt: skip
    fig.update_layout(
        template="plotly_white",
        title="Best val MAE against epochs spent, over sampler seeds",
        xaxis_title="epochs trained",
        yaxis_title="best val MAE so far (months)",
        legend=dict(orientation="h", y=-0.2),
    )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "plotly.min.js", get_plotlyjs())
    write_atomic(out / "search_efficiency.html", fig.to_html(include_plotlyjs="plotly.min.js", full_html=True,
                                                            config={"displaylogo": False}))  # fmt: skip
    files = ["search_efficiency.html"]
    if png_turned_off() is not None:
        return files
    try:
        write_bytes_atomic(out / "search_efficiency.png", fig.to_image(format="png", width=900, height=550))
        files.append("search_efficiency.png")
    except Exception:  # kaleido or its Chromium missing: the HTML holds the same figure
        pass
    return files
