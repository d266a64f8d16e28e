"""Benchmark 4, storage overhead: the per-trial cost of SQLite and PostgreSQL with 1 and 2 worker
processes, each doing the run loop's storage work per trial (count the study's trials, ask, tell) and
everything a search trial writes between ask and tell (config, per-epoch records and reports, metrics).

Imports no torch, so its workers fork from a server process that imported Optuna once (forkserver)
and every run of the benchmark starts new ones in milliseconds. scratch_postgres also gives the test
suite its scratch databases.
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

from boneage_core.errors import BoneAgeError
from search.bench.common import Sizes, section
from search.config.specs import StudyOptions
from search.storage.study import open_storage, redact, scrub


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
    """The study as `search run` opens it (search.storage.study: heartbeat, stale-trial retry), with a random
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


# a finished epoch's history row and a trial's val metrics, with the keys and value types fit writes
EPOCH_ROW = {"epoch": 0, "train_loss": 0.5, "train_mae_months": 20.1, "val_mae_months": 15.2,
             "val_rmse_months": 19.3, "epoch_time_s": 9.8}  # fmt: skip
VAL_IMAGES = 150  # the demo's val split
VAL_METRICS = {k: 1.0 for k in ("mae_months", "rmse_months", "r2", "bias_months", "n", "mae_male_months",
                                 "mae_female_months", "mae_0_5y_months", "mae_5_10y_months")}  # fmt: skip


def worker(url: str, name: str, n_trials: int, iterations: int, barrier, results, writes: str = "ask_tell") -> None:
    """One worker doing the run loop's storage work per trial until the study holds n_trials complete
    ones: count the study's trials, ask, tell; with writes="search_trial" also everything a search
    trial writes between them: its drawn config (the demo's space through suggest_config) and, every
    epoch, its history, epochs run, wall time and report (search.storage.trials.epoch_recorder, as the search
    calls it), then its wall time, val metrics and val predictions (search.storage.trials.record_outcome)."""
    from search.config.space import suggest_config
    from search.config.specs import load_spec
    from search.storage.trials import CONFIG_ATTR, epoch_recorder, record_outcome, set_trial_data

    study = open_study(url, name)
    spec = load_spec("demo")

    def objective(trial: optuna.Trial) -> float:
        if writes == "ask_tell":
            x = trial.suggest_float("x", -1, 1)
            burn(iterations)
            return x * x
        start = time.perf_counter()
        cfg = suggest_config(trial, spec.train, spec.space)
        set_trial_data(trial, CONFIG_ATTR, cfg.to_dict())
        on_epoch_end = epoch_recorder(trial, start)
        for epoch in range(1, spec.train.epochs + 1):
            burn(iterations // spec.train.epochs)
            on_epoch_end(epoch, {**EPOCH_ROW, "epoch": epoch, "val_mae_months": cfg.lr * 1000 / epoch})
        record_outcome(trial, start, VAL_METRICS, [cfg.lr * 1000] * VAL_IMAGES)
        return cfg.lr * 1000 / spec.train.epochs

    barrier.wait()
    start, mine = time.monotonic(), 0
    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if states.count(TrialState.COMPLETE) >= n_trials:
            break
        study.optimize(objective, n_trials=1)
        mine += 1
    results.put((start, time.monotonic(), mine))


def _context() -> mp.context.BaseContext:
    """Workers forked from a server process that has imported Optuna and this module once (forkserver,
    where the platform has it): a fresh interpreter per worker would pay those imports at every run,
    most of the benchmark's time. The server never imports torch, so nothing threaded is forked."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["search.bench.storage", "search.storage.trials"])
    return ctx


def storage_run(url: str, workers: int, n_trials: int, iterations: int, writes: str = "ask_tell") -> dict:
    """Wall time for `workers` processes to fill one fresh study to n_trials, from a common start (the
    processes' start-up is not counted). With two workers the study may end one trial over n_trials."""
    ctx = _context()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    open_study(url, name, heartbeat=False)  # created once here, so the workers do not race to create it
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, name, n_trials, iterations, barrier, results, writes))
        for _ in range(workers)
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
    return {"workers": workers, "writes": writes, "trials": trials, "wall_s": round(wall, 3), "ms_per_trial": ms}


def postgres_dsn(admin_url: str) -> str:
    """The URL as the driver reads it (postgresql://, no +driver); one that it cannot read (a bad
    percent-encoding, an unknown query key) is a BoneAgeError naming the URL with its password hidden."""
    from psycopg.conninfo import conninfo_to_dict

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", admin_url)
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise BoneAgeError(f"--postgres {redact(admin_url)}: not a postgresql:// URL")
    try:
        conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError, whose text may quote the password
        raise BoneAgeError(f"--postgres {redact(admin_url)} cannot be read: {scrub(str(exc), admin_url)}") from None
    return dsn


@contextlib.contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str | None]:
    """A fresh database on the server of admin_url, dropped afterwards; None if the server is not there.
    The URL it yields is a plain postgresql:// one, as every Optuna tool reads it."""
    import psycopg

    dsn = postgres_dsn(admin_url)
    try:
        conn = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        if "FATAL" in str(exc) or "authentication" in str(exc):  # a server answered and refused these credentials
            reason = scrub(str(exc).strip().splitlines()[-1], admin_url)
            raise BoneAgeError(f"--postgres {redact(admin_url)}: {reason}") from None
        yield None  # no server there: the PostgreSQL rows are skipped, and said
        return
    except psycopg.Error as exc:  # anything else the driver refuses; its text may quote the password
        raise BoneAgeError(f"--postgres {redact(admin_url)}: {scrub(str(exc), admin_url)}") from None
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
                rows[f"{backend}_trial_{workers}w"] = storage_run(
                    url, workers, sizes.storage_trials, 0, writes="search_trial"
                )
            for workers in (1, 2):
                rows[f"{backend}_cpu_{workers}w"] = storage_run(url, workers, sizes.cpu_trials, burn)
    ask_tell = {k.replace("_trivial", ""): v["ms_per_trial"] for k, v in rows.items() if "_trivial_" in k}
    per_trial = {k.replace("_trial", ""): v["ms_per_trial"] for k, v in rows.items() if "_trial_" in k}
    speedups = {
        b: round(rows[f"{b}_cpu_1w"]["ms_per_trial"] / rows[f"{b}_cpu_2w"]["ms_per_trial"], 2)
        for b in ("sqlite", "postgresql")
        if f"{b}_cpu_1w" in rows
    }
    s["figures"] = {
        "runs": rows,
        "ms_per_search_trial": per_trial,
        "ms_per_trial_ask_tell_only": ask_tell,
        "cpu_bound_speedup_2w": speedups,
        "cpu_trial_s": sizes.cpu_trial_s,
        "cores": cores,
    }
    s["met"] = bool(max(per_trial.values()) < 50 and min(speedups.values()) >= 1.7) if cores >= 2 else None
    s["measured"] = (
        "per search trial (its config, every epoch's record and report, its metrics) "
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in per_trial.items())
        + " (ask and tell alone: "
        + ", ".join(f"{v:.1f}" for v in ask_tell.values())
        + " ms); 2 workers vs 1 on a CPU-bound study: "
        + ", ".join(f"{b} {v:.2f}x" for b, v in speedups.items())
    )
    s["notes"] += [
        "Each worker is a process running the search's own per-trial storage work: open the study through "
        "search.storage.study (heartbeat on), count its trials, ask, tell. A search trial also writes what a demo "
        "trial writes: its config drawn from the demo's space, and for each of the demo's epochs its history, "
        "epochs run, wall time and report through search.storage.trials.epoch_recorder (the search's own), then its "
        "wall time and val metrics; no training. Ask-and-tell rows: x^2 of one float. CPU-bound: a pure-Python "
        f"loop of about {sizes.cpu_trial_s} s with ask and tell only. Random sampler, no pruner, so the figures "
        "are the storage's and not TPE's.",
        "ms per trial with 2 workers is the study's wall time over its trials (both workers together).",
    ]
    if cores < 2:
        s["notes"].append("Only one core: the 2-worker speed-up cannot be measured fairly here.")
    return s
