"""The search: run to N, resume, raise N, workers on SQLite and PostgreSQL, kill -9, Ctrl-C, timeout,
NaN trials, baseline, status, dashboard. Studies are tiny (40 phantom hands, 32 px, a small timm net)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from boneage_core.phantom import write_phantom
from search.storage import with_driver
from tests.conftest import REPO, assert_one_line_error, run_cli

STUDY = """
[study]
heartbeat_interval = 1
grace_period = 3
[data]
source = "{source}"
image_size = 32
phantom_n = 40
[train]
backbone = "timm:resnet10t"
epochs = 2
batch_size = 8
head_hidden = 16
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
[space.aug_strength]
type = "float"
low = 0.0
high = 1.0
[sampler]
name = "tpe"
seed = 0
n_startup_trials = 3
[pruner]
name = "median"
n_startup_trials = 2
[baseline]
backbone = "timm:resnet10t"
pretrained = "none"
epochs = 2
batch_size = 8
head_hidden = 16
"""


@pytest.fixture(scope="session")
def phantom_src(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("ph") / "phantom", 40, seed=0)


@pytest.fixture
def study(tmp_path, phantom_src):
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.format(source=phantom_src))
    return path


def load(tmp_path, url=None):
    return optuna.load_study(study_name="tiny", storage=with_driver(url or f"sqlite:///{tmp_path}/studies/tiny.db"))


def _as_at_a_terminal():
    """SIGINT back to its default in the child, as a shell gives it to a command run at a terminal.
    When the tests themselves run as a background job of a non-interactive shell, SIGINT arrives
    ignored, Python then leaves it ignored, and Ctrl-C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(cwd, study, *extra):
    """`python -m search run` in the background, as a user in directory cwd would start it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "search", "run", "--study", str(study), *extra, "--quiet"],
        cwd=cwd,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_at_a_terminal,
    )


def finished(study):
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_run_reaches_n_rerun_stays_and_raising_n_continues(tmp_path, study):
    r = run_cli("run", "--study", str(study), "--trials", "3", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = load(tmp_path)
    assert len(finished(s)) == 3
    for t in finished(s):
        assert t.user_attrs["config"]["lr"] == t.params["lr"]
        assert t.user_attrs["epochs_run"] == len(t.user_attrs["history"]) >= 1
        assert t.user_attrs["wall_time_s"] > 0
        assert "val_mae_months" in t.user_attrs["history"][0]
    r = run_cli("run", "--study", str(study), "--trials", "3", "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and len(load(tmp_path).get_trials()) == 3  # nothing new started
    r = run_cli("run", "--study", str(study), "--trials", "5", "--quiet", cwd=tmp_path)
    s = load(tmp_path)
    assert r.returncode == 0 and len(finished(s)) == 5 and len(s.get_trials()) == 5
    # the resumed sampler continues its sequence: no start-up point is proposed twice
    points = [(t.params["lr"], t.params["aug_strength"]) for t in s.get_trials()]
    assert len(set(points)) == 5


def test_two_workers_on_sqlite_share_one_budget(tmp_path, study):
    r = run_cli("run", "--study", str(study), "--trials", "6", "--workers", "2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = load(tmp_path)
    assert len(finished(s)) == 6
    assert len({t.number for t in finished(s)}) == 6
    assert all(t.state != TrialState.RUNNING for t in s.get_trials())


@pytest.fixture
def postgres_url():
    """A scratch database on the server at 127.0.0.1:5432, dropped after the test (the same helper the
    storage benchmark uses)."""
    pytest.importorskip("psycopg2")
    from search.bench_storage import scratch_postgres

    with scratch_postgres("postgresql://postgres@127.0.0.1:5432/test") as url:
        if url is None:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
        yield url


def test_two_machines_on_postgresql_share_one_study_and_budget(tmp_path, study, postgres_url):
    # two independent `run` commands, as on two machines, each in its own directory
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    procs = [start_run(tmp_path / d, study, "--storage", postgres_url, "--trials", "6") for d in "ab"]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    s = load(tmp_path, postgres_url)
    assert len(finished(s)) == 6 and len({t.number for t in finished(s)}) == 6


def _wait_for_running_trial(tmp_path, proc, timeout=120):
    """Until a trial has run an epoch. Reads the SQLite file read-only: opening it through Optuna
    while the run creates it would race the run's schema creation."""
    db = tmp_path / "studies" / "tiny.db"
    query = (
        "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
        "where t.state = 'RUNNING' and a.key = 'epochs_run'"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if db.is_file():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    if conn.execute(query).fetchone()[0]:
                        return
            except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
                pass
        time.sleep(0.3)
    raise AssertionError("no trial started")


# Long enough trials to interrupt one mid-way (about 8 s on 2 cores); the rerun must give the same
# settings, since a study holds to the settings it was created with.
LONG = ("--set", "train.epochs=30")


def test_killed_worker_trial_is_failed_and_retried_by_the_next_run(tmp_path, study):
    proc = start_run(tmp_path, study, "--trials", "1", *LONG)
    _wait_for_running_trial(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = [t for t in load(tmp_path).get_trials() if t.state == TrialState.RUNNING]
    assert len(stale) == 1
    r = run_cli("run", "--study", str(study), "--trials", "1", *LONG, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""  # --quiet: not even Optuna's ExperimentalWarning about stale trials
    s = load(tmp_path)
    failed = [t for t in s.get_trials() if t.state == TrialState.FAIL]
    assert len(finished(s)) == 1 and [t.number for t in failed] == [stale[0].number]
    # the retry runs the dead trial's parameters again
    assert finished(s)[0].params == failed[0].params


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_fails_the_current_trial_exits_and_resumes(tmp_path, study, sig, code):
    proc = start_run(tmp_path, study, "--trials", "1", *LONG)
    _wait_for_running_trial(tmp_path, proc)
    proc.send_signal(signal.SIGUSR1)  # a stack dump for diagnosis, which must not stop the run
    time.sleep(1)
    assert proc.poll() is None
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # show what it waits on (the CLI dumps its stacks on SIGUSR1)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        pytest.fail(f"run still alive 60 s after {sig.name}; its threads:\n" + proc.communicate()[1][-6000:])
    assert rc == code
    err = proc.stderr.read()
    assert "rerun the same command to continue" in err and "Traceback" not in err
    assert "most recent call first" in err  # the SIGUSR1 dump
    states = [t.state for t in load(tmp_path).get_trials()]
    assert states == [TrialState.FAIL]  # consistent: nothing left RUNNING
    r = run_cli("run", "--study", str(study), "--trials", "1", *LONG, "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and len(finished(load(tmp_path))) == 1


def test_timeout_stops_between_trials(tmp_path, study):
    r = run_cli("run", "--study", str(study), "--trials", "50", "--timeout", "0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped by --timeout" in r.stdout
    s = load(tmp_path)
    assert 1 <= len(finished(s)) < 50 and all(t.state != TrialState.RUNNING for t in s.get_trials())


def test_diverging_trial_is_recorded_as_failed_with_its_reason_and_the_search_goes_on(tmp_path, study):
    import boneage_core.train as train_mod
    from search.runner import run_study
    from search.specs import load_spec

    real = train_mod.loss_fn
    calls = {"n": 0}

    def nan_in_first_trial(name, pred, target):
        calls["n"] += 1
        loss = real(name, pred, target)
        return loss * float("nan") if calls["n"] <= 3 else loss

    os.chdir(tmp_path)
    spec = load_spec(str(study))
    url = f"sqlite:///{tmp_path}/studies/tiny.db"
    train_mod.loss_fn, saved = nan_in_first_trial, train_mod.loss_fn
    try:
        out = run_study(spec, url, n_trials=2, quiet=True)
    finally:
        train_mod.loss_fn = saved
        os.chdir(REPO)
    s = load(tmp_path)
    failed = [t for t in s.get_trials() if t.state == TrialState.FAIL]
    assert out.finished == 2 and len(failed) == 1
    assert "TrainingDiverged" in failed[0].user_attrs["fail_reason"]
    assert failed[0].value is None  # a diverged run is never a score


def test_a_search_whose_every_trial_fails_stops_with_the_reason(tmp_path, study, monkeypatch):
    import boneage_core.train as train_mod
    from search.runner import SearchFailing, run_study
    from search.specs import load_spec

    monkeypatch.setattr(train_mod, "loss_fn", lambda name, pred, target: (pred - target).mean() * float("nan"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SearchFailing, match="the last 5 trials failed.*TrainingDiverged"):
        run_study(load_spec(str(study)), f"sqlite:///{tmp_path}/studies/tiny.db", n_trials=20, quiet=True)
    assert len(load(tmp_path).get_trials()) == 5


def test_search_never_reads_the_test_split(tmp_path, study, monkeypatch):
    import boneage_core.cache as cache_mod
    from boneage_core.dataset import prepare
    from search.runner import run_study
    from search.specs import load_spec

    decoded = []
    real = cache_mod.decode_image
    monkeypatch.setattr(cache_mod, "decode_image", lambda p, s: decoded.append(p) or real(p, s))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(str(study))
    run_study(spec, f"sqlite:///{tmp_path}/studies/tiny.db", n_trials=1, quiet=True)
    read_by_search = set(decoded)
    test_paths = set(prepare(spec.data["source"], 32, seed=0, splits=("test",)).table["path"])
    assert len(read_by_search) == 34 and len(test_paths) == 6  # 70/15/15 of 40
    assert not read_by_search & test_paths


def test_baseline_is_recorded_in_the_study_and_shown_by_status(tmp_path, study):
    assert run_cli("run", "--study", str(study), "--trials", "2", "--quiet", cwd=tmp_path).returncode == 0
    r = run_cli("baseline", "--study", str(study), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    base = load(tmp_path).user_attrs["baseline"]
    assert base["config"]["epochs"] == 2 and base["val_mae_months"] > 0
    # three seeds by default, the recorded figure is their mean, and the seeds really differ
    per_seed = base["val_mae_per_seed"]
    assert len(per_seed) == 3 and len(set(per_seed)) == 3
    assert abs(base["val_mae_months"] - sum(per_seed) / 3) < 1e-9
    r = run_cli("baseline", "--study", str(study), "--seeds", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and len(load(tmp_path).user_attrs["baseline"]["val_mae_per_seed"]) == 1
    assert load(tmp_path).user_attrs["baseline"]["val_mae_per_seed"][0] == per_seed[0]  # seed 0 is seed 0
    r = run_cli("baseline", "--study", str(study), "--quiet", cwd=tmp_path)
    base = load(tmp_path).user_attrs["baseline"]
    r = run_cli("status", "--study", str(study), cwd=tmp_path)
    assert r.returncode == 0
    assert "2 complete" in r.stdout or "pruned" in r.stdout
    assert f"seed recipe: val MAE {base['val_mae_months']:.2f} months, mean of 3 seed(s)" in r.stdout
    assert f"({', '.join(f'{v:.2f}' for v in per_seed)}; SD " in r.stdout
    assert "best: trial" in r.stdout


def test_changed_search_space_is_refused_and_the_study_kept(tmp_path, study):
    assert run_cli("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path).returncode == 0
    study.write_text(study.read_text().replace("high = 1e-2", "high = 1e-1"))
    r = run_cli("run", "--study", str(study), "--trials", "2", "--quiet", cwd=tmp_path)
    assert_one_line_error(r, "space.lr.high = 0.01", "gives 0.1", "study.name")
    assert len(load(tmp_path).get_trials()) == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_over_http_and_refuses_a_busy_port(tmp_path, study):
    assert run_cli("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path).returncode == 0
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "dashboard", "--study", str(study), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    body = json.loads(resp.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert body is not None, "dashboard never answered"
        assert [s["study_name"] for s in body["study_summaries"]] == ["tiny"]
        busy = run_cli("dashboard", "--study", str(study), "--port", str(port), cwd=tmp_path)
        assert_one_line_error(busy, f"port {port} on 127.0.0.1 is in use", "--port")
        proc.terminate()  # SIGTERM, as systemd or kill stop a dashboard: the documented 143
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize("outcome", ["complete", "pruned", "failed"])
def test_a_trial_releases_its_model_before_the_next_starts(study, monkeypatch, outcome):
    """Weak references to the trial's model die once optimize() returns, with automatic garbage
    collection off: nothing of a finished, pruned or failed trial (an OOM's activations neither) is
    left holding memory for the next trial."""
    import gc
    import weakref

    import boneage_core.train as train_mod
    from search.objective import TRIAL_FAILURES, make_objective
    from search.runner import StudyData
    from search.specs import load_spec

    refs = []
    real_build = train_mod.build_model

    def tracked_build(cfg):
        model = real_build(cfg)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(train_mod, "build_model", tracked_build)
    if outcome == "failed":
        real_loss = train_mod.loss_fn
        monkeypatch.setattr(train_mod, "loss_fn", lambda *a: real_loss(*a) * float("nan"))
    spec = load_spec(str(study))
    s = optuna.create_study(pruner=AlwaysPrune() if outcome == "pruned" else optuna.pruners.NopPruner())
    objective = make_objective(spec, StudyData(spec, quiet=True), n_trials=5)
    gc.disable()
    try:
        s.optimize(objective, n_trials=1, catch=TRIAL_FAILURES)
        assert s.trials[0].state.name == outcome.upper().replace("FAILED", "FAIL")
        assert len(refs) == 1 and refs[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "workers,visible,count,expected",
    [
        (2, None, 0, [None, None]),  # no GPU
        (3, None, 1, [None, None, None]),  # one GPU: nothing to choose
        (4, None, 2, ["0", "1", "0", "1"]),  # every device visible
        (2, "2,3", 2, ["2", "3"]),  # the parent's set, not physical indices 0 and 1
        (3, "1,2", 2, ["1", "2", "1"]),  # GPU 2 is used, GPU 1 not doubled up while 2 idles
        (2, "GPU-8f2a,GPU-77c1", 2, ["GPU-8f2a", "GPU-77c1"]),  # UUIDs kept as given
        (2, "MIG-aa/1/0, MIG-aa/2/0", 2, ["MIG-aa/1/0", "MIG-aa/2/0"]),
        (2, "0,1,2", 2, ["0", "1"]),  # CUDA saw two of the three ids: only those
    ],
)
def test_workers_take_the_parents_visible_gpus_in_turn(workers, visible, count, expected):
    from search.runner import worker_devices

    assert worker_devices(workers, visible, count) == expected


def test_workers_on_one_gpu_split_its_memory_and_workers_on_their_own_gpus_do_not():
    from search.runner import device_shares

    assert device_shares([None, None, None]) == [1 / 3] * 3  # one GPU (or none): all share it
    assert device_shares(["0", "1"]) == [1.0, 1.0]
    assert device_shares(["0", "1", "0"]) == [0.5, 1.0, 0.5]
