"""The storage benchmark's worker side: processes that fill one study through search.storage.

Kept apart from search.bench so a spawned worker imports Optuna and the storage code only, not torch:
start-up then costs about a second instead of five, and every run of the benchmark starts new ones.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Iterator

import optuna
from optuna.trial import TrialState

from search.specs import load_spec
from search.storage import open_storage


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
    """The study as `search run` opens it (search.storage: heartbeat, stale-trial retry), with a random
    sampler and no pruner so that the figures are the storage's and not TPE's."""
    spec = load_spec("demo", [f"study.name={name}"])
    storage = open_storage(url, heartbeat=(spec.heartbeat_interval_s, spec.grace_period_s) if heartbeat else None)
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
    """A fresh database on the server of admin_url, dropped afterwards; None if the server is not there."""
    import psycopg2

    dsn = admin_url.replace("postgresql+psycopg2://", "postgresql://")
    try:
        conn = psycopg2.connect(dsn, connect_timeout=3)
    except psycopg2.OperationalError:
        yield None
        return
    conn.autocommit = True
    name = f"boneage_scratch_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = psycopg2.connect(dsn, connect_timeout=10)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()
