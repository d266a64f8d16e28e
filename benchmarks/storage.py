"""Benchmark 4, storage overhead: the per-trial cost of SQLite and PostgreSQL with 1 and 2 worker
processes, each doing the run loop's storage work per trial (count the study's trials, ask, tell).

Imports no torch: each spawned worker then starts in about a second instead of five, and every run
of the benchmark starts new ones. scratch_postgres also gives the test suite its scratch databases.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from benchmarks.common import Sizes, section
from search.specs import StudyOptions
from search.study import open_storage, redact


def burn_iterations(seconds: float) -> int:
    """Pure-Python loop iterations that keep one core busy for about `seconds`."""
    k = 200_000
    start = time.perf_counter()
    burn(k)
    return max(1, int(k * seconds / (time.perf_counter() - start)))


def burn(k: int) -> int:
    total = 0
    for i in range(k):
        total += i * i % 7
    return total


def open_study(url: str, name: str, heartbeat: bool = True) -> optuna.Study:
    """The study as `search run` opens it (search.study: heartbeat, stale-trial retry), with a random
    sampler and no pruner so that the figures are the storage's and not TPE's."""
    options = StudyOptions()
    storage = open_storage(url, heartbeat=(options.heartbeat_interval, options.grace_period) if heartbeat else None)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=os.getpid()),
        pruner=optuna.pruners.NopPruner(),
        load_if_exists=True,
    )


def worker(url: str, name: str, n_trials: int, iterations: int, barrier, results) -> None:
    """One worker doing the run loop's storage work per trial (count the study's trials, ask, tell)
    until the study holds n_trials complete ones."""
    study = open_study(url, name)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        burn(iterations)
        return x * x

    barrier.wait()
    start, mine = time.monotonic(), 0
    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if states.count(TrialState.COMPLETE) >= n_trials:
            break
        study.optimize(objective, n_trials=1)
        mine += 1
    results.put((start, time.monotonic(), mine))


def storage_run(url: str, workers: int, n_trials: int, iterations: int) -> dict:
    """Wall time for `workers` processes to fill one fresh study to n_trials, from a common start (the
    processes' start-up is not counted). With two workers the study may end one trial over n_trials."""
    ctx = mp.get_context("spawn")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    open_study(url, name, heartbeat=False)  # created once here, so the workers do not race to create it
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, name, n_trials, iterations, barrier, results)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    wall = max(end for _, end, _ in out) - min(start for start, _, _ in out)
    trials = sum(m for *_, m in out)
    ms = round(1000 * wall / trials, 2)
    return {"workers": workers, "trials": trials, "wall_s": round(wall, 3), "ms_per_trial": ms}


@contextlib.contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str | None]:
    """A fresh database on the server of admin_url, dropped afterwards; None if the server is not there.
    The URL it yields is a plain postgresql:// one, as every Optuna tool reads it."""
    import psycopg

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", admin_url)
    try:
        conn = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError:
        yield None
        return
    name = f"boneage_scratch_{uuid.uuid4().hex[:10]}"
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def bench_storage(sizes: Sizes, work: Path, postgres: str, **_) -> dict:
    s = section(
        "Storage overhead per trial, SQLite and PostgreSQL, 1 and 2 workers",
        "under 50 ms per trial; 2 workers finish a CPU-bound study at least 1.7 times faster than one",
    )
    cores = os.cpu_count() or 1
    burn = burn_iterations(sizes.cpu_trial_s)
    rows: dict[str, Any] = {}
    with scratch_postgres(postgres) as pg_url:
        backends = {"sqlite": f"sqlite:///{work / 'storage.db'}"}
        if pg_url:
            backends["postgresql"] = pg_url
        else:
            s["notes"].append(f"PostgreSQL rows skipped: no server answered at {redact(postgres)}.")
        for backend, url in backends.items():
            for workers in (1, 2):
                rows[f"{backend}_trivial_{workers}w"] = storage_run(url, workers, sizes.storage_trials, 0)
            for workers in (1, 2):
                rows[f"{backend}_cpu_{workers}w"] = storage_run(url, workers, sizes.cpu_trials, burn)
    per_trial = {k: v["ms_per_trial"] for k, v in rows.items() if "_trivial_" in k}
    speedups = {
        b: round(rows[f"{b}_cpu_1w"]["ms_per_trial"] / rows[f"{b}_cpu_2w"]["ms_per_trial"], 2)
        for b in ("sqlite", "postgresql")
        if f"{b}_cpu_1w" in rows
    }
    s["figures"] = {
        "runs": rows,
        "ms_per_trial_trivial": per_trial,
        "cpu_bound_speedup_2w": speedups,
        "cpu_trial_s": sizes.cpu_trial_s,
        "cores": cores,
    }
    s["met"] = bool(max(per_trial.values()) < 50 and min(speedups.values()) >= 1.7) if cores >= 2 else None
    s["measured"] = (
        "per trial "
        + ", ".join(f"{k.replace('_trivial_', ' ')} {v:.1f} ms" for k, v in per_trial.items())
        + "; 2 workers vs 1 on a CPU-bound study: "
        + ", ".join(f"{b} {v:.2f}x" for b, v in speedups.items())
    )
    s["notes"] += [
        "Each worker is a process running the search's own per-trial storage work: open the study through "
        "search.study (heartbeat on), count its trials, ask, tell. Trivial objective: x^2 of one float; "
        f"CPU-bound: a pure-Python loop of about {sizes.cpu_trial_s} s. Random sampler, no pruner, so the "
        "figures are the storage's and not TPE's.",
        "ms per trial with 2 workers is the study's wall time over its trials (both workers together).",
    ]
    if cores < 2:
        s["notes"].append("Only one core: the 2-worker speed-up cannot be measured fairly here.")
    return s
