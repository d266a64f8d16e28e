"""The search: run to N, resume, raise N, workers on SQLite and PostgreSQL, kill -9, Ctrl-C, timeout,
NaN trials, baseline, status, dashboard. Studies are tiny (conftest's TINY_STUDY). Commands run in this
process (run_main) unless a real process is what is tested: kill -9, signals, two machines, a server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.storage.results import load_baseline
from tests.conftest import REPO, assert_one_line_error, finished, load, main_ok, run_cli, run_main, start_run


def test_run_reaches_n_rerun_stays_and_raising_n_continues(tmp_path, study, capsys):
    r = run_main("run", "--study", str(study), "--trials", "3", "--quiet", cwd=tmp_path, capsys=capsys)
    assert r.returncode == 0, r.stderr
    s = load(tmp_path)
    assert len(finished(s)) == 3
    for t in finished(s):
        assert t.system_attrs["config"]["lr"] == t.params["lr"]
        assert t.user_attrs["epochs_run"] == len(t.system_attrs["history"]) >= 1
        assert "val_mae_months" in t.system_attrs["history"][0]
        # the long data is kept out of the user attrs, which optuna-dashboard lists as unwrapped lines
        assert {"config", "history", "val_metrics", "val_pred_months"}.isdisjoint(t.user_attrs)
        assert max(len(json.dumps(v)) for v in t.user_attrs.values()) < 100
    r = run_main("run", "--study", str(study), "--trials", "3", "--quiet", cwd=tmp_path, capsys=capsys)
    assert r.returncode == 0 and len(load(tmp_path).get_trials()) == 3  # nothing new started
    r = run_main("run", "--study", str(study), "--trials", "5", "--quiet", cwd=tmp_path, capsys=capsys)
    s = load(tmp_path)
    assert r.returncode == 0 and len(finished(s)) == 5 and len(s.get_trials()) == 5
    # the resumed sampler continues its sequence: no start-up point is proposed twice
    points = [(t.params["lr"], t.params["aug_strength"]) for t in s.get_trials()]
    assert len(set(points)) == 5


def _overlap(trials) -> bool:
    """Whether two of the trials ran at the same time: two processes were training."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_two_workers_share_one_budget_without_recording_trials_that_never_ran(tmp_path, study, capsys):
    """The first process starts the second itself; each asks for a trial only while the budget has room,
    so the study ends with 6 finished trials, or 7 when both asked at once, and no failed ones."""
    main_ok("run", "--study", str(study), "--trials", "6", "--workers", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    s = load(tmp_path)
    assert [t.state for t in s.get_trials() if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    assert 6 <= len(finished(s)) <= 7
    assert _overlap(finished(s))


@pytest.mark.parametrize(
    "n_trials,complete,pruned,running,timed_out,expected",
    [
        (4, 3, 1, 0, False, "done"),  # pruned trials count as finished
        (3, 2, 0, 1, False, "wait"),  # the budget's last trial runs elsewhere: ask for none
        (4, 2, 0, 1, False, "ask"),
        (4, 1, 0, 0, True, "timeout"),
        (4, 4, 0, 0, True, "done"),  # a budget reached is done, whatever the clock says
    ],
)
def test_a_new_trial_is_asked_for_only_while_the_budget_has_room(
    n_trials, complete, pruned, running, timed_out, expected
):
    from search.engine.run import next_step

    c = dict.fromkeys(TrialState, 0)
    c.update({TrialState.COMPLETE: complete, TrialState.PRUNED: pruned, TrialState.RUNNING: running})
    c[TrialState.FAIL] = 7  # failed trials never count towards the budget
    assert next_step(c, n_trials, timed_out) == expected


def test_two_machines_on_postgresql_share_one_study_and_budget(tmp_path, study, postgres_url):
    # two independent `run` commands, as on two machines, each in its own directory
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    short = ("--set", "train.epochs=1")  # what is tested is the shared budget, not training
    procs = [start_run(tmp_path / d, study, "--storage", postgres_url, "--trials", "4", *short) for d in "ab"]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    s = load(tmp_path, postgres_url)
    assert 4 <= len(finished(s)) <= 5 and len(finished(s)) == len(s.get_trials())


def _wait_for_running_trial(tmp_path, proc, timeout=120, count=1):
    """Until `count` trials are running and have run an epoch. Reads the SQLite file read-only: opening
    it through Optuna while the run creates it would race the run's schema creation."""
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
                    if conn.execute(query).fetchone()[0] >= count:
                        return
            except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
                pass
        time.sleep(0.2)
    raise AssertionError("no trial started")


# Trials long enough to interrupt one mid-way (about 3 s on 2 cores); the rerun must give the same
# settings, since a study holds to the settings it was created with.
LONG = ("--set", "train.epochs=12")


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


def _wait_for_text(path, text: str, proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_fails_the_current_trial_exits_and_resumes(tmp_path, study, sig, code, capsys):
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = start_run(tmp_path, study, "--trials", "1", *LONG, stderr=stderr)
        _wait_for_running_trial(tmp_path, proc)
        proc.send_signal(signal.SIGUSR1)  # a stack dump for diagnosis, which must not stop the run
        _wait_for_text(err, "most recent call first", proc)
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # show what it waits on (the CLI dumps its stacks on SIGUSR1)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            pytest.fail(f"run still alive 60 s after {sig.name}; its threads:\n" + err.read_text()[-6000:])
    assert rc == code
    text = err.read_text()
    assert "rerun the same command to continue" in text and "Traceback" not in text
    states = [t.state for t in load(tmp_path).get_trials()]
    assert states == [TrialState.FAIL]  # consistent: nothing left RUNNING
    r = run_main("run", "--study", str(study), "--trials", "1", *LONG, "--quiet", cwd=tmp_path, capsys=capsys)
    assert r.returncode == 0 and len(finished(load(tmp_path))) == 1


def test_sigterm_to_the_first_process_stops_its_workers_and_leaves_no_trial_running(tmp_path, study):
    """kill (SIGTERM) reaches the command's own process only; it tells the worker it started, and both
    trials in progress are failed, none left RUNNING for the heartbeat to find later."""
    proc = start_run(tmp_path, study, "--trials", "4", "--workers", "2", "--set", "train.epochs=30")
    _wait_for_running_trial(tmp_path, proc, count=2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert "rerun the same command to continue" in proc.stderr.read()
    states = [t.state for t in load(tmp_path).get_trials()]
    assert states.count(TrialState.FAIL) == 2 and TrialState.RUNNING not in states


def test_a_worker_ends_when_its_parent_is_killed_9(tmp_path, study):
    """kill -9 of the command leaves its workers no one to tell them: each notices its parent is gone,
    fails its trial and ends, instead of training alone until the budget is spent."""
    proc = start_run(tmp_path, study, "--trials", "20", "--workers", "2", "--set", "train.epochs=1000")
    _wait_for_running_trial(tmp_path, proc, count=2)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert workers, "the run started no worker process"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30  # a trial of 1000 epochs alone takes minutes
    while any(Path(f"/proc/{w}").exists() and "Z" not in _proc_state(w) for w in workers):
        if time.monotonic() > deadline:
            for w in workers:
                os.kill(w, signal.SIGKILL)
            pytest.fail("a worker still runs 30 s after its parent was killed")
        time.sleep(0.2)
    states = [t.state for t in load(tmp_path).get_trials()]
    assert states.count(TrialState.FAIL) >= 1  # the worker's trial, failed as it ended
    assert states.count(TrialState.RUNNING) <= 1  # only the killed process's own, for the heartbeat


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_timeout_stops_between_trials(tmp_path, study, capsys):
    r = run_main("run", "--study", str(study), "--trials", "50", "--timeout", "0.5", cwd=tmp_path, capsys=capsys)
    assert r.returncode == 0, r.stderr
    assert "stopped by --timeout" in r.stdout
    s = load(tmp_path)
    assert 1 <= len(finished(s)) < 50 and all(t.state != TrialState.RUNNING for t in s.get_trials())


def test_diverging_trial_is_recorded_as_failed_with_its_reason_and_the_search_goes_on(tmp_path, study, monkeypatch):
    import boneage_core.train as train_mod
    from search.config.specs import load_spec
    from search.engine.run import run_study

    real = train_mod.loss_fn
    calls = {"n": 0}

    def nan_in_first_trial(name, pred, target):
        calls["n"] += 1
        loss = real(name, pred, target)
        return loss * float("nan") if calls["n"] <= 3 else loss

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_mod, "loss_fn", nan_in_first_trial)
    out = run_study(load_spec(str(study)), f"sqlite:///{tmp_path}/studies/tiny.db", n_trials=2, quiet=True)
    s = load(tmp_path)
    failed = [t for t in s.get_trials() if t.state == TrialState.FAIL]
    assert out.finished == 2 and len(failed) == 1
    assert "TrainingDiverged" in failed[0].user_attrs["fail_reason"]
    assert failed[0].value is None  # a diverged run is never a score


def test_a_search_whose_every_trial_fails_stops_with_the_reason(tmp_path, study, monkeypatch):
    import boneage_core.train as train_mod
    from search.config.specs import load_spec
    from search.engine.run import SearchFailing, run_study

    monkeypatch.setattr(train_mod, "loss_fn", lambda name, pred, target: (pred - target).mean() * float("nan"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SearchFailing, match="the last 5 trials failed.*TrainingDiverged"):
        run_study(load_spec(str(study)), f"sqlite:///{tmp_path}/studies/tiny.db", n_trials=20, quiet=True)
    assert len(load(tmp_path).get_trials()) == 5


def test_search_never_reads_the_test_split(tmp_path, study, monkeypatch):
    import boneage_core.cache as cache_mod
    from boneage_core.dataset import prepare
    from search.config.specs import load_spec
    from search.engine.run import run_study

    decoded = []
    real = cache_mod.decode_image  # the cache build decodes every image it reads through it
    monkeypatch.setattr(cache_mod, "decode_image", lambda p, size: decoded.append(p) or real(p, size))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(str(study))
    run_study(spec, f"sqlite:///{tmp_path}/studies/tiny.db", n_trials=1, quiet=True)
    read_by_search = set(decoded)
    test_paths = set(prepare(spec.data, splits=("test",)).table["path"])
    assert len(read_by_search) == 34 and len(test_paths) == 6  # 70/15/15 of 40
    assert not read_by_search & test_paths


def test_baseline_is_recorded_in_the_study_and_shown_by_status(tmp_path, study, capsys):
    def cli(*args):
        r = run_main(*args, "--study", str(study), cwd=tmp_path, capsys=capsys)
        assert r.returncode == 0, r.stderr
        return r

    cli("run", "--trials", "2", "--quiet")
    cli("baseline", "--quiet")
    base = load_baseline(load(tmp_path))
    assert base.config["epochs"] == 2
    # three seeds by default, the recorded figure is their mean, and the seeds really differ
    per_seed = base.val_mae_per_seed
    assert len(per_seed) == 3 and len(set(per_seed)) == 3
    assert base.val_mae_months == pytest.approx(sum(per_seed) / 3)
    assert base.mean_predictor_val_mae_months > min(per_seed)  # trained beats predicting the mean
    status = cli("status").stdout
    states = [t.state.name.lower() for t in load(tmp_path).get_trials()]
    counted = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned") if states.count(s))
    assert f"study tiny: 2 trials: {counted} (target 2 finished" in status
    assert f"baseline: val MAE {base.val_mae_months:.2f} months, mean of 3 seeds" in status
    assert f"({', '.join(f'{v:.2f}' for v in per_seed)}; SD " in status
    assert "best: trial" in status
    cli("baseline", "--seeds", "1", "--quiet")
    assert load_baseline(load(tmp_path)).val_mae_per_seed == per_seed[:1]  # seed 0 is seed 0


def test_a_changed_search_space_is_refused_and_an_edited_file_ignored(tmp_path, study, capsys):
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    r = run_main(
        "run", "--study", str(study), "--trials", "2", "--set", "space.lr.high=0.1", cwd=tmp_path, capsys=capsys
    )
    assert_one_line_error(r, "space.lr.high = 0.01", "gives 0.1", "study.name")
    assert len(load(tmp_path).get_trials()) == 1
    study.write_text(study.read_text().replace("high = 1e-2", "high = 1e-1"))
    r = main_ok("run", "--study", str(study), "--trials", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    assert "differs from the study's stored settings (space.lr.high)" in r.stdout  # said, and not used
    assert load(tmp_path).get_trials()[1].distributions["lr"].high == 0.01


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, proc, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.3)


def _http(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request to 127.0.0.1:port with the headers given (Host among them), as a browser would send it."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_dashboard_shows_the_metric_by_name_the_note_and_retrains_files_and_refuses_a_busy_port(
    tmp_path, study, capsys
):
    for command in (["run", "--trials", "2"], ["baseline", "--seeds", "2"], ["retrain", "--seeds", "2"]):
        main_ok(*command, "--study", str(study), "--quiet", cwd=tmp_path, capsys=capsys)
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
        body = _get_json(f"http://127.0.0.1:{port}/api/studies", proc)
        assert [s["study_name"] for s in body["study_summaries"]] == ["tiny"]
        study_id = body["study_summaries"][0]["study_id"]
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}", proc)
        assert detail["objective_names"] == ["val MAE (months)"]
        base = load_baseline(load(tmp_path))
        note = detail["note"]["body"]
        assert f"baseline, mean ± SD over 2 seeds | {base.val_mae_months:.2f}" in note
        assert "## Final test" in note and "| recipe | MAE (months) |" in note
        files = sorted(a["filename"] for a in detail["artifacts"])
        assert files == ["predictions_baseline_seed0.csv", "predictions_baseline_seed1.csv",
                         "predictions_best_seed0.csv", "predictions_best_seed1.csv", "retrain.json"]  # fmt: skip
        retrain_json = next(a for a in detail["artifacts"] if a["filename"] == "retrain.json")
        served = f"http://127.0.0.1:{port}/artifacts/{study_id}/{retrain_json['artifact_id']}"
        with urllib.request.urlopen(served, timeout=5) as resp:
            assert json.loads(resp.read())["study"] == "tiny"  # the file itself, served by the dashboard
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")]  # no page may read it
        # no other web page reaches it: a foreign Host (DNS rebinding), a foreign Origin, and the API's
        # DELETE from either, over real HTTP
        for headers, method, path in (
            ({"Host": "evil.example"}, "GET", "/api/studies"),
            ({"Host": f"evil.example:{port}"}, "GET", f"/artifacts/{study_id}/{retrain_json['artifact_id']}"),
            ({"Origin": "http://evil.example"}, "GET", "/api/studies"),
            ({"Host": "evil.example"}, "DELETE", f"/api/studies/{study_id}"),
            ({"Origin": "https://evil.example"}, "DELETE", f"/api/studies/{study_id}"),
        ):
            status, body = _http(port, method, path, headers)
            assert status == 403 and b"tiny" not in body, (headers, method, status, body[:300])
        assert len(load(tmp_path).trials) == 2  # neither DELETE reached the study
        assert _http(port, "GET", "/api/studies", {"Host": f"localhost:{port}"})[0] == 200  # its own names still work
        busy = run_main("dashboard", "--study", str(study), "--port", str(port), cwd=tmp_path, capsys=capsys)
        assert_one_line_error(busy, f"port {port} on 127.0.0.1 is in use", "--port")
        proc.terminate()  # SIGTERM, as systemd or kill stop a dashboard: the documented 143
        assert proc.wait(timeout=30) == 143
        assert proc.stderr.read().strip().splitlines()[-1] == "terminated (SIGTERM): dashboard stopped"
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
    from boneage_core.dataset import SplitsBySize
    from search.config.specs import load_spec
    from search.engine.objective import TRIAL_FAILURES, make_objective

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
    objective = make_objective(spec, SplitsBySize(spec.data))
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
    from search.engine.workers import worker_devices

    assert worker_devices(workers, visible, count) == expected


def test_workers_on_one_gpu_split_its_memory_and_workers_on_their_own_gpus_do_not():
    from search.engine.workers import device_shares

    assert device_shares([None, None, None]) == [1 / 3] * 3  # one GPU (or none): all share it
    assert device_shares(["0", "1"]) == [1.0, 1.0]
    assert device_shares(["0", "1", "0"]) == [0.5, 1.0, 0.5]


def test_each_worker_process_starts_with_its_own_gpu_and_the_parents_environment_is_kept(monkeypatch):
    """start_workers gives worker i the i-th device in CUDA_VISIBLE_DEVICES as the process starts (CUDA
    reads it once), and leaves this process's own setting as it was."""
    from search.engine import workers

    seen = []

    class FakeProcess:
        def __init__(self, target, args, name):
            self.args = args

        def start(self):
            seen.append((self.args, os.environ.get("CUDA_VISIBLE_DEVICES")))

    class FakeContext:
        Process = FakeProcess

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(workers.mp, "get_context", lambda method: FakeContext if method == "spawn" else None)
    procs = workers.start_workers(print, lambda i: (i,), ["2", "3", "2"])
    assert len(procs) == 2 and [(a[2:], env) for a, env in seen] == [((1,), "3"), ((2,), "2")]
    assert all(a[:2] == (os.getpid(), print) for a, _ in seen)  # each watches this process, then runs target
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_a_study_name_reads_the_current_directorys_studies_folder_first(tmp_path, phantom_src, capsys, monkeypatch):
    """A user's edited ./studies/NAME.toml is the study that is created, run says which file it read and
    status which command created the study; without one, the packaged study of that name is used."""
    from tests.conftest import TINY_STUDY

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.toml").write_text(TINY_STUDY.format(source=phantom_src))
    r = main_ok("run", "--study", "tiny", "--trials", "1", cwd=tmp_path, capsys=capsys)
    assert "study 'tiny' (studies/tiny.toml)" in r.stdout
    status = main_ok("status", "--study", "tiny", cwd=tmp_path, capsys=capsys).stdout
    assert "settings: stored in the study in sqlite:///studies/tiny.db (created by `python -m search run" in status
    from search.config.specs import load_spec, packaged_studies

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies" / "demo.toml").write_text(
        (packaged_studies() / "demo.toml").read_text() + "\n[study]\nname = 'mine'\n"
    )
    assert load_spec("demo").name == "mine"  # the edited copy, not the packaged one
    assert load_spec("rsna").path == packaged_studies() / "rsna.toml"  # no local copy: the packaged one


def test_long_commands_show_progress_in_months_and_quiet_silences_them(tmp_path, study, kaggle_dir, capsys):
    """A bar per seed with epochs, ETA and the last MAE in months, on stderr; never raw JSON."""
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    shown = {
        "baseline": main_ok("baseline", "--study", str(study), "--seeds", "1", cwd=tmp_path, capsys=capsys),
        "retrain": main_ok("retrain", "--study", str(study), "--seeds", "1", cwd=tmp_path, capsys=capsys),
        "cache": main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys),
    }
    bars = {k: r.stderr.replace("\r", "\n") for k, r in shown.items()}
    assert "baseline, seed 1/1 (28 images, 32 px): 100%" in bars["baseline"] and "2/2 [" in bars["baseline"]
    assert "val MAE" in bars["baseline"] and "months" in bars["baseline"]
    assert "retrain best, seed 1/1 (34 images, 32 px): 100%" in bars["retrain"]
    assert "test MAE" in bars["retrain"] and "retrain baseline, seed 1/1" in bars["retrain"]
    assert "decoding train at 32 px: 100%" in bars["cache"]
    for r in shown.values():
        assert not any(line.lstrip().startswith("{") for line in (r.stdout + r.stderr).splitlines())
    quiet = main_ok("baseline", "--study", str(study), "--seeds", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    assert quiet.stderr == ""


def test_a_run_on_a_partial_download_trains_on_the_usable_images_and_records_the_skipped(tmp_path, study, capsys):
    from tests.test_cli import _partial_download

    root = _partial_download(tmp_path)
    r = main_ok("run", "--study", str(study), "--data", str(root), "--trials", "1", cwd=tmp_path, capsys=capsys)
    warnings = [line for line in r.stderr.splitlines() if "labelled images are skipped" in line]
    assert len(warnings) == 1 and "3 of 60 labelled images are skipped" in warnings[0]
    s = load(tmp_path)
    assert s.user_attrs["skipped_images"] == {
        "train/1380": "missing",
        "train/1381": "missing",
        "train/1390": "not a readable image (truncated)",
    }
    [trial] = finished(s)
    assert trial.system_attrs["val_metrics"]["n"] == 6  # the official validation set, half of it through a link
    main_ok("report", "--study", str(study), "--data", str(root), cwd=tmp_path, capsys=capsys)
    summary = (tmp_path / "results" / "tiny" / "summary.md").read_text()
    assert "skipped images (3, all in summary.json): train/1380 (missing)" in summary
