"""Faults and security: the run recovers and loses nothing; bad data is one line through the CLI. The CLI
runs in this process (run_main) except where a real process is the point: kill -9, a server restart."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import (
    BAD_FILES,
    REPO,
    assert_one_line_error,
    break_image,
    finished,
    hand_png,
    load,
    main_ok,
    make_kaggle,
    run_main,
    start_run,
)


def _break_csv(root: Path, column: str, value: str) -> None:
    path = root / "boneage-training-dataset.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[0, column] = value
    df.to_csv(path, index=False)


def _drop_column(root: Path) -> None:
    path = root / "boneage-training-dataset.csv"
    pd.read_csv(path).drop(columns=["male"]).to_csv(path, index=False)


def _duplicate_id(root: Path) -> None:
    path = root / "boneage-training-dataset.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[1, "id"] = df.loc[0, "id"]
    df.to_csv(path, index=False)


def _twin_image(root: Path) -> None:
    folder = root / "boneage-training-dataset"
    shutil.copy(folder / "1380.png", folder / "1381.jpg")  # another picture under 1381's id


def _all_images_gone(root: Path) -> None:
    shutil.rmtree(root / "boneage-training-dataset")
    (root / "boneage-training-dataset").mkdir()


def _empty(root: Path) -> None:
    shutil.rmtree(root)
    root.mkdir()


def _two_bad(root: Path) -> None:
    break_image(root / "boneage-training-dataset" / "1380.png", "truncated")
    break_image(root / "boneage-training-dataset" / "1381.png", "missing")


DATA_CASES = [
    ("empty directory", _empty, "is empty"),
    (
        "no label file",
        lambda r: (r / "boneage-training-dataset.csv").rename(r / "labels.csv"),
        "no training label file",
    ),
    ("column missing", _drop_column, "column 'male' is missing"),
    ("age not a number", lambda r: _break_csv(r, "boneage", "twelve"), "'twelve' is not an age"),
    ("age negative", lambda r: _break_csv(r, "boneage", "-1"), "is not an age"),
    ("age NaN", lambda r: _break_csv(r, "boneage", "nan"), "is not an age"),
    ("age above 300", lambda r: _break_csv(r, "boneage", "400"), "is not an age"),
    ("sex unknown", lambda r: _break_csv(r, "male", "x"), "unrecognised sex value 'x'"),
    ("duplicate id", _duplicate_id, "duplicate id"),
    ("two images of one id", _twin_image, "id '1381' has 2 images", "1381.jpg"),
    # an empty cell is NaN, which pandas 3 keeps through astype(str): each column's empty cell is one line
    ("id empty", lambda r: _break_csv(r, "id", ""), "column 'id' = '' is not an image id"),
    ("age empty", lambda r: _break_csv(r, "boneage", ""), "is not an age"),
    ("sex empty", lambda r: _break_csv(r, "male", ""), "row 2, column 'male' has unrecognised sex value ''"),
    ("every image missing", _all_images_gone, "none of its 20 images"),
    ("a broken download", _two_bad, "split train: 2 of 20 labelled images (10%) are missing or unreadable"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_one_line_exit_2_and_keeps_the_study(tmp_path, case, capsys):
    name, breaks, *fragments = case
    root = make_kaggle(tmp_path / "rsna", n=20)
    breaks(root)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_main("data", "cache", str(root), "--size", "32", cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside


@pytest.mark.parametrize("kind", [k for k, _ in BAD_FILES] + ["corrupt pixel data"])
def test_one_file_that_did_not_arrive_whole_is_skipped_with_one_warning(tmp_path, kind, capsys):
    root = make_kaggle(tmp_path / "rsna", n=20)
    break_image(root / "boneage-training-dataset" / "1380.png", kind)
    r = main_ok("data", "cache", str(root), "--size", "32", cwd=tmp_path, capsys=capsys)
    assert "cached 19 images" in r.stdout
    warnings = [line for line in r.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "1 of 20 labelled images are skipped" in warnings[0] and "train/1380" in warnings[0]
    listed = pd.read_csv(warnings[0].split("the full list is in ")[1], dtype=str)
    assert listed[["split", "id"]].values.tolist() == [["train", "1380"]]
    # data check agrees: the same image is unusable, the data is usable
    r = main_ok("data", "check", str(root), cwd=tmp_path, capsys=capsys)
    assert "split train: 20 labelled, 19 usable, 1 skipped" in r.stdout and "train/1380" in r.stdout


def test_kill_9_during_cache_build_leaves_no_cache_that_is_used(tmp_path, monkeypatch, capsys):
    root = make_kaggle(tmp_path / "rsna", n=20)
    big = tmp_path / "big.png"  # one large scan copied: decoding 250 of them takes a second or two
    hand_png(big, 1, size=(1600, 1200))
    for i in range(20, 250):
        shutil.copy(big, root / "boneage-training-dataset" / f"{1377 + i}.png")
    labels = root / "boneage-training-dataset.csv"
    labels.write_text(labels.read_text() + "".join(f"{1377 + i},{i % 200 + 10},True\n" for i in range(20, 250)))
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BONEAGE_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "data", "cache", str(root), "--size", "64"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(cache.glob(".images-*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(cache.glob("images-*px.npy"))  # only the temporary file, under a name never read
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(cache))
    r = main_ok("data", "cache", str(root), "--size", "64", cwd=tmp_path, capsys=capsys)  # the rerun needs no process
    assert "cached 250 images" in r.stdout
    assert not list(cache.glob(".images-*.tmp"))  # the killed build's temporary file is cleaned up
    import numpy as np

    arrays = [np.load(f) for f in cache.glob("images-*64px.npy")]  # train, val, test
    assert len(arrays) == 3 and sum(len(a) for a in arrays) == 250
    assert all((a.reshape(len(a), -1).max(axis=1) > 0).all() for a in arrays)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    ],
    ids=["out of memory", "cuda error"],
)
def test_a_device_error_fails_the_trial_with_its_reason_and_the_search_goes_on(tmp_path, study, monkeypatch, error):
    import boneage_core.train as train_mod
    from search.config.specs import load_spec
    from search.engine.run import run_study

    real = train_mod.train_one_epoch
    calls = {"n": 0}

    def oom_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", oom_once)
    monkeypatch.chdir(tmp_path)
    out = run_study(load_spec(str(study)), f"sqlite:///{tmp_path}/studies/tiny.db", n_trials=2, quiet=True)
    failed = [t for t in load(tmp_path).get_trials() if t.state == TrialState.FAIL]
    assert out.finished == 2 and len(failed) == 1
    assert type(error).__name__ in failed[0].user_attrs["fail_reason"]


def _pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, timeout=120)


def _restart_postgres() -> None:
    _pg_ctl("restart")


needs_pg_cluster = pytest.mark.skipif(
    not os.path.isdir("/etc/postgresql") or shutil.which("pg_ctlcluster") is None,
    reason="needs a local PostgreSQL cluster managed by pg_ctlcluster",
)


@needs_pg_cluster
def test_postgres_restart_mid_run_reconnects_and_reaches_n(tmp_path, study, postgres_url):
    proc = start_run(tmp_path, study, "--storage", postgres_url, "--trials", "3", "--set", "train.epochs=3")
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        try:
            if len(finished(load(tmp_path, postgres_url))) >= 1:
                break
        except Exception:  # study not created yet
            pass
        time.sleep(0.3)
    _restart_postgres()
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    s = load(tmp_path, postgres_url)
    assert len(finished(s)) == 3
    assert all(t.state != TrialState.RUNNING for t in s.get_trials())


def _last_beat(url: str, trial_id: int):
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.text("select heartbeat from trial_heartbeats where trial_id = :t")
            return conn.execute(query, {"t": trial_id}).scalar()
    finally:
        engine.dispose()


@needs_pg_cluster
def test_a_running_trials_heartbeat_moves_again_after_a_postgres_restart_and_the_loss_is_said_once(
    postgres_url, caplog, monkeypatch
):
    """The heartbeat thread Optuna runs beside a trial, on this project's storage: the beats that fail
    while the server is down are logged once, and the first beat after it is back is written."""
    import warnings

    from optuna.storages._heartbeat import get_heartbeat_thread

    from search.storage.study import open_storage

    def wait_for(condition, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    def lost() -> list:
        return [r for r in caplog.records if "could not be written" in r.getMessage()]

    storage = open_storage(postgres_url, heartbeat=(1, 30))
    beats = []  # every beat the thread has finished trying, written or not
    real_beat = storage.record_heartbeat
    monkeypatch.setattr(storage, "record_heartbeat", lambda trial_id: real_beat(trial_id) or beats.append(trial_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": here, by hand
        trial = optuna.create_study(study_name="beats", storage=storage).ask()
    logger = "search.storage.study"
    with caplog.at_level(logging.WARNING, logger=logger), get_heartbeat_thread(trial._trial_id, storage):
        wait_for(lambda: _last_beat(postgres_url, trial._trial_id) is not None, "no first heartbeat")
        before = _last_beat(postgres_url, trial._trial_id)
        _pg_ctl("stop")
        try:
            wait_for(lambda: lost(), "a beat against the stopped server was not logged")
            tried = len(beats)  # with the logged beat or just before it: +3 is two more failed beats at least
            wait_for(lambda: len(beats) >= tried + 3, "the heartbeat stopped trying while the server was down")
        finally:
            _pg_ctl("start")
        wait_for(lambda: _last_beat(postgres_url, trial._trial_id) > before, "the heartbeat never moved again")
        wait_for(lambda: any("is written again" in r.getMessage() for r in caplog.records), "no recovery line")
    assert len(lost()) == 1


@pytest.mark.parametrize("where", ["userinfo", "query string"])
def test_passwords_are_redacted_in_prints_user_attrs_and_reports(tmp_path, study, postgres_url, where, capsys):
    # the server trusts local connections, so any password is accepted: a real run with a secret URL
    if where == "userinfo":
        secret_url = postgres_url.replace("postgres@", "postgres:hunter2@")
    else:
        secret_url = postgres_url + "?password=hunter2"
    printed = ""
    for command in (["run", "--trials", "1"], ["status"], ["report"]):
        r = main_ok(*command, "--study", str(study), "--storage", secret_url, cwd=tmp_path, capsys=capsys)
        printed += r.stdout + r.stderr
    assert "***" in printed and "hunter2" not in printed
    st = load(tmp_path, postgres_url)
    attrs = str(st.user_attrs) + "".join(str(t.user_attrs) for t in st.get_trials())
    assert "hunter2" not in attrs
    assert not any("hunter2" in p.read_text(errors="ignore") for p in (tmp_path / "results").rglob("*") if p.is_file())


def test_dashboard_serves_the_study_storage_where_asked_warns_beyond_this_machine_and_refuses_early(
    monkeypatch, caplog, tmp_path
):
    """What serve() hands optuna-dashboard (the study's storage, the host and port asked, no files without
    a study), the warning for an address beyond this machine, and the refusals made before any server
    starts (a port in use, an empty host)."""
    import socket

    import optuna_dashboard

    from boneage_core import BoneAgeError
    from search.cli import dashboard

    calls = []
    monkeypatch.setattr(dashboard._ThreadedServer, "serve_forever", lambda self: calls.append(self))
    given = []
    real_wsgi = optuna_dashboard.wsgi

    def wsgi(storage, **kw):
        given.append((storage, kw))
        return real_wsgi(storage, **kw)

    monkeypatch.setattr(optuna_dashboard, "wsgi", wsgi)
    url = f"sqlite:///{tmp_path}/x.db"
    optuna.create_study(study_name="s", storage=url)
    sigterm = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING):
        dashboard.serve(url, "0.0.0.0", 0)
    [server] = calls
    [(storage, kw)] = given
    assert server.server_address[0] == "0.0.0.0" and kw == {"artifact_store": None}
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]  # the study's own storage
    assert "anyone who can reach this address" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == sigterm  # its SIGTERM handler is handed back
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dashboard.serve(url, "127.0.0.1", 0)
    assert calls[-1].server_address[0] == "127.0.0.1" and "anyone" not in caplog.text
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BoneAgeError, match=f"port {port} on 127.0.0.1 is in use"):
            dashboard.serve(url, "127.0.0.1", port)
    with pytest.raises(BoneAgeError, match="--host is empty"):
        dashboard.serve(url, " ", 0)
    assert len(calls) == 2  # neither refusal started a server


def test_unwritable_results_directory_is_one_line(tmp_path, study, capsys):
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    (tmp_path / "results").write_text("a file where the results directory should be")
    r = run_main("report", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "cannot write the report")
    assert len(load(tmp_path).trials) == 1


def test_a_full_disk_under_the_study_stops_at_once_with_what_happened(tmp_path, study, monkeypatch, capsys):
    """SQLite reports 'database or disk is full' on commit: no retry can fix it, so the run says so once
    and stops (exit 1), instead of reconnecting for minutes; what was committed stays."""
    import sqlite3

    import sqlalchemy.exc

    from search.config.specs import load_spec
    from search.engine.run import SearchFailing, run_study

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/studies/tiny.db"
    run_study(load_spec(str(study)), url, n_trials=1, quiet=True)

    def full(self, *args, **kwargs):
        raise sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(optuna.study.Study, "optimize", full)
    with pytest.raises(SearchFailing, match="no space left on the device holding the study storage"):
        run_study(load_spec(str(study)), url, n_trials=3, quiet=True)
    assert "reconnecting" not in capsys.readouterr().err
    assert len(finished(load(tmp_path))) == 1


def test_a_corrupted_study_file_is_one_line(tmp_path, study, capsys):
    db = tmp_path / "studies" / "tiny.db"
    db.parent.mkdir()
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")
    data = bytearray(db.read_bytes())
    data[100:4000] = b"\x5a" * 3900  # the header's tail and the schema page
    db.write_bytes(bytes(data))
    r = run_main("status", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "study storage", "corrupt")


def test_status_and_report_read_a_read_only_copy_and_leave_it_untouched(tmp_path, study, monkeypatch, capsys):
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    copy = tmp_path / "copy.db"
    shutil.copy(tmp_path / "studies" / "tiny.db", copy)
    copy.chmod(0o444)
    before = copy.read_bytes()
    # as a user who may not write the copy sees it (root may write anything, so say so for the test)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw))
    for command in ("status", "report"):
        main_ok(command, "--study", str(study), "--storage", f"sqlite:///{copy}", cwd=tmp_path, capsys=capsys)
    assert copy.read_bytes() == before


def test_a_stray_retrain_json_in_results_is_not_read_the_study_holds_the_result(tmp_path, study, capsys):
    """results/<study>/ holds copies; a file there, cut short or left by another study of the same name,
    never becomes the report's verdict."""
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    res = tmp_path / "results" / "tiny"
    res.mkdir(parents=True)
    (res / "retrain.json").write_text('{"study": "tiny", "recipes": {"best": {"mae": {"mea')  # cut short
    main_ok("report", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert "No final test yet: `python -m search retrain --study" in (res / "summary.md").read_text()


def test_a_pickle_as_weights_is_refused_in_one_line_without_torchs_advice(tmp_path):
    from boneage_core import BoneAgeError
    from boneage_core.models import load_state_dict_file

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(BoneAgeError) as exc:
        load_state_dict_file(path)
    assert "not a plain state dict" in str(exc.value) and "\n" not in str(exc.value)
    assert "weights_only=False" not in str(exc.value)
    assert not (tmp_path / "pwned").exists()


def test_a_really_full_disk_is_one_line_that_says_so(tmp_path, study, tiny_disk, capsys):
    url = f"sqlite:///{tiny_disk}/tiny.db"
    main_ok("run", "--study", str(study), "--storage", url, "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    free = shutil.disk_usage(tiny_disk).free
    (tiny_disk / "filler").write_bytes(b"\0" * max(0, free - 8192))  # leave a few pages
    r = run_main(
        "run", "--study", str(study), "--storage", url, "--trials", "30", "--quiet", cwd=tmp_path, capsys=capsys
    )
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    assert "no space left" in r.stderr.splitlines()[-1]
    assert r.stderr.count("reconnecting") <= 1
    (tiny_disk / "filler").unlink()
    s = load(tmp_path, url)  # what was committed is intact and readable
    assert len(finished(s)) >= 1


def test_one_postgresql_url_serves_this_cli_optuna_load_study_the_optuna_cli_and_optuna_dashboard(
    tmp_path, study, postgres_url, capsys
):
    """postgresql://... as a user writes it: SQLAlchemy picks psycopg 3 for it, which this project
    installs, so no tool needs the URL rewritten."""
    import json
    import urllib.request

    assert postgres_url.startswith("postgresql://")
    main_ok(
        "run", "--study", str(study), "--storage", postgres_url, "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys
    )
    assert len(optuna.load_study(study_name="tiny", storage=postgres_url).trials) == 1
    bin_dir = Path(sys.executable).parent
    listed = subprocess.run([bin_dir / "optuna", "studies", "--storage", postgres_url], capture_output=True, text=True)
    assert listed.returncode == 0 and "tiny" in listed.stdout, listed.stderr
    port = socket_port()
    dash = subprocess.Popen([bin_dir / "optuna-dashboard", postgres_url, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    names = [s["study_name"] for s in json.loads(resp.read())["study_summaries"]]
                break
            except OSError:
                assert dash.poll() is None and time.monotonic() < deadline, dash.stderr.read()
                time.sleep(0.3)
        assert names == ["tiny"]
    finally:
        dash.kill()
        dash.wait()


def socket_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cache_directory_that_is_a_file_or_read_only_is_one_line(tmp_path, kaggle_dir, monkeypatch, capsys):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(blocker))
    r = run_main("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, f"cache directory {blocker} is not writable", "BONEAGE_CACHE_DIR")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # root ignores permission bits: only a read-only mount is read-only to it
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        monkeypatch.setenv("BONEAGE_CACHE_DIR", str(read_only))
        r = run_main("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, f"cache directory {read_only} is not writable", "Read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(read_only)], capture_output=True)


def test_a_disk_too_small_for_the_cache_is_one_line_and_leaves_nothing(tmp_path, tiny_disk, monkeypatch, capsys):
    """1 MB of tmpfs; the 14 training images of 20 at 320 px need 1.4 MB. Without the check the build died
    of SIGBUS, with no message, leaving its temporary file."""
    root = make_kaggle(tmp_path / "rsna", n=20)
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(tiny_disk))
    r = run_main("data", "cache", str(root), "--size", "320", cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "the cache needs 1.4 MB in", "MB are free", "BONEAGE_CACHE_DIR")
    assert not list(tiny_disk.rglob("*.npy"))
    # the free-space figure can be stale (another process filling the disk): the blocks are reserved
    # before any is written, so that too is one line, not a bus error
    import boneage_core.cache as cache_mod

    monkeypatch.setattr(cache_mod, "DISK_MARGIN_BYTES", -(2**40))
    r = run_main("data", "cache", str(root), "--size", "320", cwd=tmp_path, capsys=capsys)
    assert r.returncode == 1 and "Traceback" not in r.stderr  # a full disk: a failure along the way, not bad input
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot write the image cache in")
    assert "No space left on device" in r.stderr
    assert not list(tiny_disk.rglob("*.npy"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_trial_whose_process_died_before_its_first_heartbeat_is_failed_and_retried(backend, tmp_path, request):
    """Optuna's stale check only sees trials with a heartbeat; one whose process was killed between
    creating it and its first beat stayed RUNNING, and a resumed search that counted it waited for ever."""
    import warnings

    from search.storage.study import open_storage

    url = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    storage = open_storage(url, heartbeat=(1, 2))
    study = optuna.create_study(study_name="s", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat by hand, outside optimize
        silent = study.ask()  # RUNNING, no heartbeat: what such a kill leaves
        beating = study.ask()
        storage.record_heartbeat(beating._trial_id)
        optuna.storages.fail_stale_trials(study)
        assert study.trials[silent.number].state == TrialState.RUNNING  # within the grace period: alive
        time.sleep(2.2)
        storage.record_heartbeat(beating._trial_id)
        optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.FAIL, TrialState.RUNNING]  # the beating one is left alone
    assert states[2:] == [TrialState.WAITING]  # and the silent one is queued again, as a dead worker's is


SWALLOWED = """
import os, signal, weakref
from search.engine.objective import STOP, raise_if_stopped
from search.engine.run import stop_on_signals

stop_on_signals()
class Held: pass
held = Held()
def callback(ref):  # a signal handled inside a weakref callback raises where Python swallows it
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(1000))
ref = weakref.ref(held, callback)
del held
print("went on", STOP.is_set())
try:
    raise_if_stopped()
except KeyboardInterrupt:
    print("raised again")
"""


def test_a_stop_signal_python_swallows_is_raised_again_at_the_next_check(tmp_path):
    """A worker's Ctrl-C or SIGTERM can land in a garbage-collector callback, where Python swallows the
    KeyboardInterrupt: the worker had trained on, its later signals ignored. The flag the handler sets
    is raised again at the next epoch or trial, and the swallowed one prints nothing."""
    r = subprocess.run(
        [sys.executable, "-c", SWALLOWED],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["went on True", "raised again"]
    assert r.stderr == ""
