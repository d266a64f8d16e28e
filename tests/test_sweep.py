"""The second adversarial sweep's classes (issue 28): nothing already written is lost, damaged files are
named in one line, what cannot be honoured is refused before the first trial, messages say what is left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import optuna
import pytest

from search.cli.main import Terminated
from tests.conftest import assert_one_line_error, load, main_ok, run_main


def _stop_after(k: int, exc: BaseException, monkeypatch) -> None:
    """The phantom writer raises exc at its k-th image, as Ctrl-C, SIGTERM or a full disk would."""
    import boneage_core.phantom as phantom

    real = phantom._write_one

    def write_one(job):
        if job[2] == k:
            raise exc
        return real(job)

    monkeypatch.setattr(phantom, "_write_one", write_one)


@pytest.mark.parametrize(
    "exc,code,said",
    [
        (KeyboardInterrupt(), 130, "interrupted: nothing was written; rerun the same command"),
        (Terminated(), 143, "terminated (SIGTERM): nothing was written; rerun the same command"),
        (OSError(28, "No space left on device"), 1, "error: cannot write the phantom to ph (No space left on device)"),
    ],
    ids=["ctrl-c", "sigterm", "full-disk"],
)
def test_make_phantom_stopped_halfway_leaves_nothing_and_the_rerun_works(
    tmp_path, exc, code, said, monkeypatch, capsys
):
    _stop_after(5, exc, monkeypatch)
    r = run_main("data", "make-phantom", "ph", "--n", "10", cwd=tmp_path, capsys=capsys)
    assert r.returncode == code and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == said and "study" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary beside it
    monkeypatch.undo()
    main_ok("data", "make-phantom", "ph", "--n", "10", cwd=tmp_path, capsys=capsys)
    assert len(list((tmp_path / "ph" / "boneage-training-dataset").glob("*.png"))) == 10


def test_make_phantom_fills_an_empty_folder_and_refuses_a_full_one(tmp_path, capsys):
    (tmp_path / "ph").mkdir()
    main_ok("data", "make-phantom", "ph", "--n", "4", cwd=tmp_path, capsys=capsys)
    assert (tmp_path / "ph" / "boneage-training-dataset.csv").is_file()
    assert_one_line_error(
        run_main("data", "make-phantom", "ph", "--n", "4", cwd=tmp_path, capsys=capsys), "not an empty directory"
    )


@pytest.mark.parametrize(
    "argv,said",
    [
        (
            ["bench", "--quick"],
            "bench.json and bench.md hold the sections that finished, if any did; with --work, a rerun reads "
            "back the search trials that finished",
        ),
        (["data", "cache", "."], "each split cached so far is kept; rerun the same command to finish"),
        (["data", "check", "."], "nothing was changed"),
    ],
    ids=["bench", "data-cache", "data-check"],
)
def test_sigterm_in_a_command_without_a_study_does_not_speak_of_one(tmp_path, argv, said, monkeypatch, capsys):
    import search.cli.commands as commands

    def stop(*args, **kwargs):
        raise Terminated()

    monkeypatch.setattr(commands, argv[0], stop)
    r = run_main(*argv, cwd=tmp_path, capsys=capsys)
    assert r.returncode == 143 and "study" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"terminated (SIGTERM): {said}"


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_retrain_that_stops_keeps_the_previous_results_whole(tmp_path, study, tiny_disk, monkeypatch, capsys):
    """A retrain refused, interrupted, or stopped by a full disk (a checkpoint, the result files) leaves the
    previous retrain's files as they were: the new set is written aside and swapped in only when whole."""
    import pathlib

    import search.engine.retrain as retrain_mod

    main_ok("run", "--study", str(study), "--trials", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    main_ok("retrain", "--study", str(study), "--seeds", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    results = tmp_path / "results" / "tiny"
    before = _snapshot(results)
    assert "retrain.json" in before and len([n for n in before if n.startswith("predictions_")]) == 4

    big_batch = ("--set", "train.batch_size=100000")
    refused = run_main("retrain", "--study", str(study), *big_batch, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(refused, "batch_size")
    assert _snapshot(results) == before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain_mod, "_train_seeds", interrupted)
    r = run_main("retrain", "--study", str(study), "--seeds", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    assert r.returncode == 130 and _snapshot(results) == before
    monkeypatch.undo()

    # a full disk under the checkpoints: torch's own save would raise RuntimeError (a traceback)
    shutil.move(tmp_path / "checkpoints", tmp_path / "checkpoints-kept")
    (tmp_path / "checkpoints").symlink_to(tiny_disk)
    r = run_main("retrain", "--study", str(study), "--set", "train.epochs=3", cwd=tmp_path, capsys=capsys)  # bars on
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("error: cannot write the checkpoint") and "No space left on device" in last, r.stderr
    assert _snapshot(results) == before and not [p for p in tiny_disk.rglob("*") if p.is_file()]

    # a full disk while the new result files are written: the third file fails
    (tmp_path / "checkpoints").unlink()
    shutil.move(tmp_path / "checkpoints-kept", tmp_path / "checkpoints")
    real, calls = pathlib.Path.write_bytes, []  # the files under results/, not the checkpoints

    def third_fails(self, data):
        calls.extend([self] if self.absolute().parent == results else [])
        if len(calls) == 3 and self.absolute().parent == results:
            raise OSError(28, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", third_fails)
    r = run_main("retrain", "--study", str(study), "--seeds", "2", "--tta", "--quiet", cwd=tmp_path, capsys=capsys)
    monkeypatch.undo()
    assert r.returncode == 1 and "No space left on device" in r.stderr.strip().splitlines()[-1], r.stderr
    assert _snapshot(results) == before  # no temporary left, no file of the new set swapped in
    main_ok("report", "--study", str(study), cwd=tmp_path, capsys=capsys)  # the stored result, written out
    assert json.loads((results / "retrain.json").read_text())["tta"] is True  # the new one

    # a new study of the same name (the old file deleted): its report never shows the old final test
    (tmp_path / "studies" / "tiny.db").unlink()
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    r = main_ok("report", "--study", str(study), cwd=tmp_path, capsys=capsys)
    (aside,) = results.glob("superseded-*")
    assert f"does not write again to results/tiny/{aside.name}/" in r.stdout
    assert not (results / "retrain.json").exists() and not list(results.glob("predictions_*"))
    assert not (results / "bland_altman.html").exists() and (aside / "bland_altman.html").is_file()
    assert (aside / "retrain.json").is_file() and len(list(aside.glob("predictions_*"))) == 4
    assert "Final test" not in (results / "summary.md").read_text()


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickled(path) -> None:
    import numpy as np

    np.save(path, np.array([{"not": "images"}], dtype=object), allow_pickle=True)


DAMAGE = {
    "truncated npy": ("images-*px.npy", _truncate),
    "pickled npy": ("images-*px.npy", _pickled),
    "garbage npy": ("images-*px.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage" * 50)),
    "unreadable list, other columns": ("*.unreadable.csv", lambda p: p.write_text("a,b\n1,2\n")),
    "unreadable list, binary": ("*.unreadable.csv", lambda p: p.write_bytes(b"\xff\xfe\x00" * 40)),
    "split file garbage": ("splits/*.csv", lambda p: p.write_text("id,split\n1,elsewhere\n")),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_cache_file_is_named_and_rebuilt(tmp_path, kaggle_dir, private_cache, case, capsys):
    import numpy as np

    main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    pattern, damage = DAMAGE[case]
    targets = sorted(private_cache.glob(pattern))
    assert targets, pattern
    for path in targets:
        damage(path)
    r = main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    warned = [line for line in r.stderr.splitlines() if line.startswith("WARNING")]
    assert warned and all("damaged" in w for w in warned) and str(targets[0]) in " ".join(warned), r.stderr
    assert "Traceback" not in r.stderr
    for cache in private_cache.glob("images-*px.npy"):
        assert np.load(cache, mmap_mode="r").dtype == np.uint8  # rebuilt whole
    again = main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    assert "WARNING" not in again.stderr  # and used from then on


def test_a_data_folder_whose_name_is_not_utf8_is_read_as_given(tmp_path, study, phantom_src, capsys):
    """A path is bytes on Linux: one that is no UTF-8 (Python holds it with surrogates) is hashed, stored
    and written as it is, instead of a UnicodeEncodeError where a fingerprint is taken."""
    odd = os.fsdecode(bytes(tmp_path) + b"/ph\xff \\ '\"")
    shutil.copytree(phantom_src, odd)
    main_ok("run", "--study", str(study), "--data", odd, "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    assert spec_of(tmp_path).data.source == odd
    main_ok("report", "--study", str(study), cwd=tmp_path, capsys=capsys)  # its files name the path too
    summary = (tmp_path / "results" / "tiny" / "summary.md").read_bytes().decode("utf-8")  # valid UTF-8
    assert "ph\\udcff" in summary  # the byte shown, not dropped
    status = main_ok("status", "--study", str(study), cwd=tmp_path, capsys=capsys).stdout
    assert "--data $'" in status and "/ph\\xff \\x5c \\x27\"'" in status  # bash's quoting: it can be pasted


def spec_of(tmp_path):
    from search.storage.truth import spec_from_study, study_ref

    url = f"sqlite:///{tmp_path}/studies/tiny.db"
    return spec_from_study(load(tmp_path, url), study_ref("tiny", url, []), [])


def _other_program(db) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("create table invoices(x)")
        c.commit()


def _table_dropped(db) -> None:
    import sqlite3

    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("drop table trial_values")
        c.commit()


def _no_alembic(db) -> None:
    import sqlite3

    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("drop table alembic_version")
        c.commit()


STORAGE_FILES = {
    "empty file": (lambda db: db.write_bytes(b""), "is an empty file", "holds no study yet"),
    "a study file missing its schema version": (_no_alembic, "is damaged", "alembic_version"),
    "another program's database": (_other_program, "is a SQLite database of something else", "invoices"),
    "a study file missing a table": (_table_dropped, "is damaged", "trial_values"),
}


@pytest.mark.parametrize("case", STORAGE_FILES, ids=list(STORAGE_FILES))
def test_a_storage_file_that_is_no_study_storage_says_what_it_is(tmp_path, study, case, capsys):
    """Each said as what it is, never as 'became read-only'; another program's database is never written
    into; an empty file is a new storage to run (SQLite's own reading of it)."""
    make, *fragments = STORAGE_FILES[case]
    db = tmp_path / "studies" / "tiny.db"
    db.parent.mkdir()
    make(db)
    before = db.read_bytes()
    for command in ("status", "report", "baseline"):
        r = run_main(command, "--study", str(study), cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, *fragments)
        assert "read-only" not in r.stderr and db.read_bytes() == before
    r = run_main("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    if case == "empty file":
        assert r.returncode == 0 and len(load(tmp_path).trials) == 1
    else:
        assert_one_line_error(r, *fragments)
        assert db.read_bytes() == before


def test_a_study_storage_locked_by_another_process_is_one_line_soon(tmp_path, study, monkeypatch, capsys):
    import sqlite3

    import search.storage.study as study_mod

    db = tmp_path / "studies" / "tiny.db"
    db.parent.mkdir()
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")
    monkeypatch.setattr(study_mod, "SQLITE_LOCK_WAIT_S", 0.5)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        r = run_main("status", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "locked by another process for 0.5 s", "try again")


def test_a_cache_made_stale_by_changed_files_is_removed_when_its_successor_is_built(
    tmp_path, kaggle_dir, private_cache, capsys
):
    main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    main_ok("data", "cache", str(kaggle_dir), "--size", "48", cwd=tmp_path, capsys=capsys)
    first = sorted(private_cache.glob("images-*.npy"))
    assert len(first) == 6  # three splits at two sizes
    spelled = os.path.relpath(kaggle_dir, tmp_path) + "/"  # the same folder written another way: the same cache
    main_ok("data", "cache", spelled, "--size", "32", cwd=tmp_path, capsys=capsys)
    assert sorted(private_cache.glob("images-*.npy")) == first
    for _ in range(3):  # each change of the images' mtimes used to leave one more cache per split
        for image in (kaggle_dir / "boneage-training-dataset").glob("*.png"):
            os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
        main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    now = sorted(private_cache.glob("images-*.npy"))
    assert len(now) == 6 and len(list(private_cache.glob("images-*.unreadable.csv"))) == 6
    assert len(set(now) - set(first)) == 3  # the 32 px caches were rebuilt, the 48 px ones left alone
    assert {p for p in first if "-48px" in p.name} <= set(now)


def test_a_write_that_fails_names_its_file(tmp_path, monkeypatch):
    """write() that fails names no file (a full disk midway): the result file it was is named instead."""
    import pathlib

    from search.storage.writes import write_atomic

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OSError) as exc:
        write_atomic(tmp_path / "summary.md", "text")
    assert exc.value.filename == str(tmp_path / "summary.md") and exc.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_bench_with_credentials_a_server_refuses_is_one_line_not_a_skip(tmp_path, postgres_url, capsys):
    """A server answered and refused the role: said in one line with the password hidden, never recorded
    as 'no server answered' (the PostgreSQL rows silently skipped)."""
    url = "postgresql://nosuchrole:hunter2@127.0.0.1:5432/test"
    r = run_main("bench", "--quick", "--only", "storage", "--out", "b", "--postgres", url, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "--postgres postgresql://nosuchrole:***@", 'role "nosuchrole" does not exist')
    assert "hunter2" not in r.stderr + r.stdout
