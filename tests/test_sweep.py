"""The second adversarial sweep's classes (issue 28): nothing already written is lost, damaged files are
named in one line, what cannot be honoured is refused before the first trial, messages say what is left."""

from __future__ import annotations

import pytest

from search.cli.main import Terminated
from tests.conftest import assert_one_line_error, main_ok, run_main


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
        (OSError(28, "No space left on device"), 2, "error: cannot write the phantom to ph (No space left on device)"),
    ],
    ids=["ctrl-c", "sigterm", "full-disk"],
)
def test_make_phantom_stopped_halfway_leaves_nothing_and_the_rerun_works(tmp_path, exc, code, said, monkeypatch, capsys):
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
        (["bench", "--quick"], "bench.json and bench.md hold the sections that finished"),
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
