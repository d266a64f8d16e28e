"""python -m search bench: the quick mode's report (its structure and verdicts, never its timings), the
GPU path on the CPU, and bad input as one-line errors."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from boneage_core.train import training_batches
from search.bench.gpu_throughput import gpu_throughput
from search.bench.report import render_markdown
from search.bench.run import SECTIONS
from search.bench.storage import scratch_postgres
from search.storage.trials import trial_data
from tests.conftest import REPO, _as_at_a_terminal, assert_one_line_error, main_ok, run_main


def test_quick_bench_writes_every_benchmark_with_its_target_figures_and_verdict(tmp_path, capsys):
    # the server trusts local connections, so a password in the URL is accepted and must never be written
    secret = "postgresql://postgres:hunter2@127.0.0.1:5432/test"
    out, work = tmp_path / "out", tmp_path / "work"
    jobs = ["--search-jobs", "2", "--work", str(work)]  # the two sampler seeds at once, one core each
    r = main_ok("bench", "--quick", "--out", str(out), "--postgres", secret, *jobs, cwd=tmp_path, capsys=capsys)
    assert "hunter2" not in r.stdout + r.stderr
    assert not any(b"hunter2" in p.read_bytes() for p in out.iterdir())
    report = json.loads((out / "bench.json").read_text())
    assert report["mode"] == "quick" and list(report["sections"]) == list(SECTIONS)
    shown = ["--postgres", "postgresql://postgres:***@127.0.0.1:5432/test"]
    typed = ["python", "-m", "search", "bench", "--quick", "--out", str(out), *shown, *jobs]
    assert report["command"] == shlex.join(typed)
    assert {"cpu", "cores", "torch", "optuna", "pillow"} <= set(report["machine"])
    s = report["sections"]

    d = s["data_path"]["figures"]
    assert d["images"] == 4 and d["source_hw_px"] == [2044, 1514]
    assert d["ratio_vs_original"] == pytest.approx(d["ours_images_per_s"] / d["original_images_per_s"], rel=0.01)
    assert s["data_path"]["met"] == (d["ours_images_per_s"] / d["original_images_per_s"] >= 100)

    o = s["training_overhead"]["figures"]
    assert len(o["pairs"]) == 1 and o["ratio"] == pytest.approx(
        o["fit_epoch_best_s"] / o["bare_epoch_best_s"], abs=1e-3
    )
    assert s["training_overhead"]["met"] == (o["ratio"] <= 1.10)
    assert o["search_epoch_ratio"] == pytest.approx(o["search_epoch_best_s"] / o["bare_epoch_best_s"], abs=1e-3)

    se = s["search_efficiency"]["figures"]
    runs = [se[arm] for arm in ("tpe_pruned", "tpe_unpruned", "random_equal_epochs")]
    assert [[r["sampler_seed"] for r in arm] for arm in runs] == [[0, 1]] * 3  # every arm, every sampler seed
    for pruned, unpruned, random in zip(*runs, strict=True):
        assert pruned["trials"] == unpruned["trials"] == 2 and unpruned["pruned"] == 0
        assert unpruned["epochs"] == 2 * 2  # no pruner: every trial trains its 2 epochs in full
        assert random["trials"] == max(1, round(pruned["epochs"] / 2))
    saved = [1 - p["epochs"] / u["epochs"] for p, u in zip(runs[0], runs[1], strict=True)]
    assert se["epochs_saved"] == pytest.approx(saved, abs=1e-3)
    assert s["search_efficiency"]["met"] == all(se["claims_met"].values())
    curves = s["search_efficiency"]["curves"]
    assert len(curves["tpe_pruned"]["per_seed"]) == 2 and "random_expected" in curves
    assert (out / "search_efficiency.html").is_file() and "search_efficiency.html" in (out / "bench.md").read_text()

    st = s["storage"]["figures"]
    assert st["runs"]["sqlite_trivial_1w"]["trials"] == 10  # one worker: exactly the budget
    assert set(st["cpu_bound_speedup_2w"]) == {"sqlite", "postgresql"}
    assert st["runs"]["sqlite_trial_1w"]["trials"] == 10 and st["runs"]["sqlite_trial_1w"]["writes"] == "search_trial"
    slowest, speedup = max(st["ms_per_search_trial"].values()), min(st["cpu_bound_speedup_2w"].values())
    assert s["storage"]["met"] == (slowest < 50 and speedup >= 1.7)

    gpu = s["gpu_throughput"]
    assert gpu["skipped"] and gpu["met"] is None  # the suite hides every GPU (conftest)

    md = (out / "bench.md").read_text()
    assert md == render_markdown(report)
    for section in s.values():
        assert section["target"] in md and section["title"] in md
        assert (section["skipped"] or section["measured"]) in md
    if len(os.sched_getaffinity(0)) == 2:  # CI's machines; with one core the seeds run one after another
        assert "this run trained 2 sampler seeds at a time, each process on 1 core." in md
    assert sorted(p.name for p in (work / "search_efficiency").glob("*.db")) == ["search-s0.db", "search-s1.db"]

    # a rerun with the same --work reads every arm back, whatever its --search-jobs (here one process,
    # which spares the pool's start): nothing trains, the figures are the same
    again, one = tmp_path / "again", ["--search-jobs", "1", "--work", str(work)]
    main_ok("bench", "--quick", "--only", "search_efficiency", "--out", str(again), *one, cwd=tmp_path, capsys=capsys)
    se2 = json.loads((again / "bench.json").read_text())["sections"]["search_efficiency"]
    for arm in ("tpe_pruned", "tpe_unpruned", "random_equal_epochs"):
        for first, second in zip(se[arm], se2["figures"][arm], strict=True):
            assert first["read_back"] == 0 and second["read_back"] == first["trials"] > 0
            assert {k: v for k, v in first.items() if k != "read_back"} == {
                k: v for k, v in second.items() if k != "read_back"
            }
    assert any("Read back from the work directory" in n and "seed(s) 0, 1" in n for n in se2["notes"])
    assert not any("at a time" in n for n in se2["notes"])  # nothing trained: no claim about how it ran

    # fewer trials than the arms hold: each counts its first one, and the note says so
    fewer = tmp_path / "fewer"
    args = ["--only", "search_efficiency", "--search-trials", "1", "--out", str(fewer), *one]
    main_ok("bench", "--quick", *args, cwd=tmp_path, capsys=capsys)
    se3 = json.loads((fewer / "bench.json").read_text())["sections"]["search_efficiency"]
    first_tpe = [arm[0] for arm in runs[:2]]
    assert [r["trials"] for r in se3["figures"]["tpe_pruned"]] == [1, 1]
    assert [r["read_back"] for r in se3["figures"]["tpe_unpruned"]] == [1, 1]
    assert se3["figures"]["tpe_unpruned"][0]["epochs"] == 2 and first_tpe[1]["trials"] == 2
    assert any(n.startswith("Arms holding more trials than asked, counted up to 1") for n in se3["notes"])


def test_core_shares_are_disjoint_and_threads_follow_the_cores_a_process_may_use(monkeypatch):
    """--search-jobs J pins each of J processes to its own share of the cores; run_study then starts as
    many threads as its share holds (taskset and a container's cpuset count the same way)."""
    from search.bench.search_efficiency import core_shares
    from search.engine import workers

    assert core_shares([0, 1], 2) == [[0], [1]] and core_shares([0, 1], 5) == [[0], [1]]
    shares = core_shares(list(range(16)), 3)
    assert sorted(c for share in shares for c in share) == list(range(16)) and [len(x) for x in shares] == [6, 5, 5]
    assert core_shares([3, 7], 1) == [[3, 7]]
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {1}, raising=False)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 16)
    assert workers.threads_per_worker(1) == 1  # one core allowed, whatever the machine has
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert workers.threads_per_worker(1) == 8 and workers.threads_per_worker(3) == 2


def test_gpu_throughput_code_path_runs_on_the_cpu_and_counts_the_timed_epochs_full_batches(monkeypatch):
    """The GPU benchmark's code (resident uint8 images, augmentation, the fit step) at toy size, and its
    figure: one warm-up batch apart, then one timed epoch whose full batches (40 images in batches of
    16 train 32) over its seconds (a clock that reads 2.5 s across it) are the images/s."""
    import types

    import search.bench.gpu_throughput as gpu_mod

    trained, clock = [], iter([100.0, 102.5])
    real = gpu_mod.train_one_epoch
    monkeypatch.setattr(
        gpu_mod, "train_one_epoch", lambda state, images, *a: trained.append(len(images)) or real(state, images, *a)
    )
    monkeypatch.setattr(gpu_mod, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    rows = gpu_throughput(torch.device("cpu"), sizes=(32,), n_images=40, batch={32: 16}, warmup_batches=1)
    assert trained == [16, 40]  # the warm-up batch, then the timed epoch
    assert rows == [{"image_px": 32, "batch_size": 16, "images": 40, "epoch_s": 2.5, "images_per_s": 12.8}]


def test_training_batches_cover_the_epoch_in_full_batches():
    images = torch.randint(0, 256, (50, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    batches = list(training_batches(images, 16, 0.5, g, torch.device("cpu")))
    assert [x.shape for _, x in batches] == [(16, 1, 32, 32)] * 3  # the last 2 images wait for the next epoch
    seen = torch.cat([idx for idx, _ in batches])
    assert len(set(seen.tolist())) == 48
    assert sum(x.shape[0] for _, x in training_batches(images, 16, 0, g, torch.device("cpu"), False)) == 50


def test_scratch_postgres_is_none_when_no_server_answers():
    with scratch_postgres("postgresql://postgres@127.0.0.1:1/test") as url:
        assert url is None


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--only", "data_path,speed"], ["--only", "speed", "data_path"]),
        (["--out", "{file}"], ["cannot create the output directory", "Not a directory"]),
        (["--device", "cuda"], ["cuda"]),  # the suite hides every GPU (conftest)
        (["--only", "search_efficiency", "--work", "{file}"], ["cannot create the work directory", "Not a directory"]),
        (["--search-jobs", "0"], ["--search-jobs", "0"]),
    ],
)
def test_bench_bad_input_is_one_line(tmp_path, args, fragments, capsys):
    (tmp_path / "afile").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "afile" / "out")) for a in args]
    assert_one_line_error(run_main("bench", "--quick", *args, cwd=tmp_path, capsys=capsys), *fragments)


def test_each_finished_section_is_written_before_a_later_one_fails(tmp_path, monkeypatch):
    """A crash minutes into a run (as the GPU section did on a GPU machine) must not lose the sections
    already measured: bench.json and bench.md are rewritten after every section."""
    from search.bench import run as bench_run
    from search.bench.common import section

    def first(**_):
        s = section("First", "a target")
        s.update(measured="42x", figures={"x": 1})
        return s

    def second(**_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(bench_run, "BENCHES", {"data_path": first, "storage": second})
    with pytest.raises(RuntimeError, match="illegal memory access"):
        bench_run.run_bench(tmp_path / "out", quick=True, only="data_path,storage", log=lambda line: None)
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert list(report["sections"]) == ["data_path"] and report["sections"]["data_path"]["measured"] == "42x"
    assert "42x" in (tmp_path / "out" / "bench.md").read_text()


def test_a_storage_benchmark_trial_writes_what_a_search_trial_writes(tmp_path):
    """Its config, each epoch's history, epochs run, wall time and report, then its val metrics."""
    import multiprocessing as mp

    import optuna

    from search.bench.storage import VAL_IMAGES, open_study, worker
    from search.config.specs import load_spec

    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(url, "b", heartbeat=False)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    worker(url, "b", 2, 0, ctx.Barrier(1), results, writes="search_trial")
    assert results.get(timeout=10)[2] == 2
    trials = optuna.load_study(study_name="b", storage=url).get_trials()
    demo = load_spec("demo")
    epochs = demo.train.epochs
    for t in trials:
        assert set(t.params) == set(demo.space) and trial_data(t, "config")["lr"] == t.params["lr"]
        assert len(trial_data(t, "history")) == t.user_attrs["epochs_run"] == epochs
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
        assert "mae_months" in trial_data(t, "val_metrics") and len(trial_data(t, "val_pred_months")) == VAL_IMAGES


def _states(db) -> dict[str, int]:
    if not db.is_file():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return dict(c.execute("select state, count(*) from trials group by state").fetchall())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--search-jobs 2 needs two cores")
def test_sigterm_to_the_bench_alone_stops_its_seed_processes_at_once(tmp_path):
    """kill <pid> reaches the parent only: its seed processes must stop too (they had gone on to the end
    of every arm, hours in a full run) and start no further trial; the rerun with --work retries theirs."""
    cmd = [sys.executable, "-m", "search", "bench", "--quick", "--only", "search_efficiency"]
    cmd += ["--search-trials", "6", "--search-jobs", "2", "--work", "w", "--out", "o"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=_as_at_a_terminal)
    dbs = [tmp_path / "w" / "search_efficiency" / f"search-s{s}.db" for s in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(_states(db).get("RUNNING") for db in dbs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.3)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    signalled = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # Optuna stores naive UTC
    err = proc.communicate(timeout=90)[1]
    assert proc.returncode == 143 and "Traceback" not in err and "Exception ignored" not in err, err
    assert "terminated (SIGTERM)" in err.strip().splitlines()[-1]
    for db in dbs:  # no trial started after the signal; the one in progress failed (or, if the signal
        # came as it was being created, left RUNNING for the rerun's stale check)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            last = datetime.datetime.fromisoformat(c.execute("select max(datetime_start) from trials").fetchone()[0])
        assert last < signalled + datetime.timedelta(seconds=1), (last, signalled)
    states = [_states(db) for db in dbs]
    assert sum(s.get("COMPLETE", 0) + s.get("PRUNED", 0) for s in states) < 2 * (6 + 6 + 1)  # not run to the end


def test_a_damaged_study_in_the_work_directory_is_one_line_and_left_as_it_was(tmp_path, capsys):
    held = tmp_path / "w" / "search_efficiency" / "search-s0.db"
    held.parent.mkdir(parents=True)
    held.write_bytes(b"not a database " * 400)
    args = ["bench", "--quick", "--only", "search_efficiency", "--search-seeds", "1", "--work", "w", "--out", "o"]
    r = run_main(*args, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "search-s0.db", "not a database file")
    assert held.read_bytes() == b"not a database " * 400
