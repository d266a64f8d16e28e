"""The command line: data commands, and every bad input -> one line naming the problem, exit 2, nothing stored lost."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from search.config.specs import load_spec
from search.storage.study import redact
from tests.conftest import assert_one_line_error, break_image, main_ok, make_kaggle, make_official, run_main

GOOD = """
[data]
source = "phantom"
image_size = 32
phantom_n = 40
[train]
backbone = "timm:resnet10t"
epochs = 1
batch_size = 8
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
[baseline]
backbone = "timm:resnet10t"
pretrained = "none"
batch_size = 8
epochs = 1
"""


def test_data_check_reports_layout_splits_ages_sex_and_modes(official_dir, tmp_path, capsys):
    out = main_ok("data", "check", str(official_dir), cwd=tmp_path, capsys=capsys).stdout
    assert "official RSNA release" in out
    assert "split train: 10 labelled, 10 usable, 0 skipped" in out
    assert "split val: 6 labelled" in out and "split test: 4 labelled" in out
    assert "age: 20.0 to" in out and "male" in out and "image modes: L x20" in out
    assert "skipped images: 0" in out


def test_data_check_on_a_partial_official_download_exits_0_and_reports_all_of_it(tmp_path, capsys):
    """The issue's case: 2 missing, 1 truncated, CSV test labels, symlinked images."""
    root = _partial_download(tmp_path)
    r = main_ok("data", "check", str(root), cwd=tmp_path, capsys=capsys)
    assert "split train: 60 labelled, 57 usable, 3 skipped (2 missing, 1 not a readable image (truncated))" in r.stdout
    assert "Bone Age Test Set/Bone age ground truth.csv" in r.stdout and "split test: 4 labelled, 4 usable" in r.stdout
    assert "split val: 6 labelled, 6 usable" in r.stdout
    assert "skipped images: 3" in r.stdout
    for case in ("train/1380: missing", "train/1381: missing", "train/1390: not a readable image (truncated)"):
        assert case in r.stdout


def _partial_download(tmp_path):
    root = make_official(tmp_path / "rsna", n_train=60)  # 3 of 60 bad: 5%, not above
    images = root / "boneage-training-dataset"
    (images / "1380.png").unlink()
    (images / "1381.png").unlink()
    break_image(images / "1390.png", "truncated")
    elsewhere = tmp_path / "other-disk"  # the validation images are links to another disk
    shutil.move(root / "Bone Age Validation Set" / "boneage-validation-dataset-2", elsewhere)
    (root / "Bone Age Validation Set" / "boneage-validation-dataset-2").symlink_to(elsewhere, target_is_directory=True)
    test = root / "Bone Age Test Set"
    pd.read_excel(test / "Bone age ground truth.xlsx").to_csv(test / "Bone age ground truth.csv", index=False)
    (test / "Bone age ground truth.xlsx").unlink()
    return root


def test_data_check_lists_a_split_it_expected_but_did_not_find(official_dir, tmp_path, capsys):
    (official_dir / "Bone Age Test Set" / "Bone age ground truth.xlsx").unlink()
    r = main_ok("data", "check", str(official_dir), cwd=tmp_path, capsys=capsys)
    assert "split test: folder 'Bone Age Test Set' is there but its label file" in r.stdout
    assert "no test set: a seeded split of the training images stands in" in r.stdout
    assert "WARNING" in r.stderr and "Bone age ground truth.xlsx" in r.stderr


def test_data_check_on_a_broken_download_lists_it_and_exits_2(kaggle_dir, tmp_path, capsys):
    for name in ("1380.png", "1381.png"):
        (kaggle_dir / "boneage-training-dataset" / name).write_bytes(b"")
    r = run_main("data", "check", str(kaggle_dir), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "split train: 2 of 12 labelled images (17%)", "download looks incomplete")
    assert "train/1380: empty file" in r.stdout and "skipped images: 2" in r.stdout


def test_make_phantom_writes_the_kaggle_layout(tmp_path, capsys):
    r = main_ok("data", "make-phantom", str(tmp_path / "ph"), "--n", "24", "--seed", "3", cwd=tmp_path, capsys=capsys)
    assert "noise floor: MAE 4.79 months" in r.stdout
    assert len(list((tmp_path / "ph" / "boneage-training-dataset").glob("*.png"))) == 24
    r = main_ok("data", "check", str(tmp_path / "ph"), cwd=tmp_path, capsys=capsys)
    assert "Kaggle copy" in r.stdout and "split train: 24 labelled, 24 usable" in r.stdout
    # never over a directory that holds anything: the user's data would be mixed with hands
    before = sorted(p.name for p in (tmp_path / "ph").iterdir())
    r = run_main("data", "make-phantom", str(tmp_path / "ph"), "--n", "24", cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "already exists and is not an empty directory")
    assert sorted(p.name for p in (tmp_path / "ph").iterdir()) == before


def test_data_cache_decodes_a_directory(kaggle_dir, tmp_path, capsys):
    r = main_ok("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path, capsys=capsys)
    assert "cached 12 images at 32 px" in r.stdout


BAD_ARGS = [
    ("trials zero", ["run", "--trials", "0"], "--trials", "at least 1"),
    ("trials negative", ["run", "--trials", "-3"], "--trials"),
    ("trials not a number", ["run", "--trials", "many"], "--trials", "'many'"),
    ("baseline seeds zero", ["baseline", "--seeds", "0"], "--seeds", "at least 1"),
    ("reselect one candidate", ["retrain", "--reselect", "1"], "--reselect", "2 or more candidates"),
    ("reselect one seed", ["retrain", "--reselect", "2", "--reselect-seeds", "1"], "--reselect-seeds", "2 or more"),
    ("reselect seeds alone", ["retrain", "--reselect-seeds", "2"], "--reselect-seeds", "give --reselect too"),
    ("unknown study", ["run", "--study", "nosuch"], "unknown study 'nosuch'"),
    ("unknown key", ["run", "--set", "train.learning_rate=0.1"], "train.learning_rate"),
    ("unknown section", ["run", "--set", "trian.lr=0.1"], "trian.lr"),
    ("wrong type", ["run", "--set", "train.epochs=many"], "train.epochs", "whole number"),
    # one coercion rule in every section: a quoted number is a string, for train as for data
    ("quoted float in train", ["run", "--set", 'train.lr="1e-3"'], "'train.lr' must be a number", "'1e-3'"),
    ("quoted int in data", ["run", "--set", 'data.seed="3"'], "'data.seed' must be a whole number", "'3'"),
    ("fraction for an int", ["run", "--set", "train.epochs=2.0"], "'train.epochs' must be a whole number", "2.0"),
    ("number for a bool", ["run", "--set", "train.use_sex=1"], "'train.use_sex' must be true or false"),
    ("baseline field range", ["run", "--set", "baseline.lr=-1"], "baseline.lr = -1.0", "positive"),
    (
        "heartbeat beyond an hour",
        ["run", "--set", "study.heartbeat_interval=10000000000", "--set", "study.grace_period=20000000000"],
        "study.heartbeat_interval",
        "at most 3600",
    ),
    (
        "int range with fractional ends",
        ["run", "--set", 'space.epochs.type="int"', "--set", "space.epochs.low=1.5", "--set", "space.epochs.high=3"],
        "[space.epochs]",
        "whole-number ends",
    ),
    (
        "int step beyond its range",
        ["run", "--set", 'space.epochs.type="int"', "--set", "space.epochs.low=1", "--set", "space.epochs.high=3",
         "--set", "space.epochs.step=5"],
        "[space.epochs]",
        "step = 5 is larger than the range",
    ),  # fmt: skip
    ("no equals", ["run", "--set", "train.epochs"], "section.key=value"),
    ("unknown backbone", ["run", "--set", "train.backbone=vgg"], "backbone"),
    ("image too small", ["run", "--set", "data.image_size=16"], "image_size", "32 px"),
    ("low above high", ["run", "--set", "space.lr.low=0.1"], "[space.lr]", "low = 0.1 is above high"),
    ("log low not positive", ["run", "--set", "space.lr.low=0.0"], "[space.lr]", "low > 0"),
    (
        "empty categorical",
        ["run", "--set", 'space.batch_size.type="categorical"', "--set", "space.batch_size.choices=[]"],
        "[space.batch_size]",
        "non-empty",
    ),
    ("batch above training set", ["run", "--set", "train.batch_size=64"], "batch_size 64 is above the 28 training"),
    ("malformed storage URL", ["status", "--storage", "notaurl"], "storage URL", "not valid"),
    ("missing data dir", ["run", "--data", "/nonexistent/rsna"], "/nonexistent/rsna", "does not exist"),
    ("weights file missing", ["run", "--set", 'train.pretrained="/no/such.pth"'], "/no/such.pth"),
    ("unreachable postgres", ["status", "--storage", "postgresql://bob:hunter2@127.0.0.1:1/x"], "cannot open"),
    (
        "password in the query",
        ["status", "--storage", "postgresql://bob@127.0.0.1:1/x?password=hunter2"],
        "cannot open",
    ),
    ("storage in memory", ["run", "--storage", "sqlite:///:memory:"], "in memory", "lost"),
    ("storage under ~", ["run", "--storage", "sqlite:///~/x.db"], "'~' is no home folder", "sqlite:////"),
    ("status under ~", ["status", "--storage", "sqlite:///~/x.db"], "'~' is no home folder", "sqlite:////"),
    # options are never abbreviated: --stor is not --storage, and its URL is not repeated with its password
    ("abbreviated storage", ["status", "--stor=postgresql://bob:hunter2@127.0.0.1:1/x"], "unrecognized", "--stor"),
    ("abbreviated, URL apart", ["run", "--stora", "postgresql://bob:hunter2@127.0.0.1:1/x"], "--stora"),
    ("workers beyond the machine", ["run", "--workers", "100"], "--workers 100", "room for"),
    ("pruner startup negative", ["run", "--set", "pruner.n_startup_trials=-1"], "pruner.n_startup_trials", "least 0"),
    (
        "hyperband reduction factor 1",
        ["run", "--set", 'pruner.name="hyperband"', "--set", "pruner.reduction_factor=1"],
        "pruner.reduction_factor",
        "at least 2",
    ),
    ("pruner min resource 0", ["run", "--set", "pruner.min_resource=0"], "pruner.min_resource", "at least 1"),
    ("sampler seed negative", ["run", "--set", "sampler.seed=-1"], "sampler.seed", "2^32"),
    ("data seed too large", ["run", "--set", "data.seed=4294967296"], "data.seed", "2^32"),
    ("space bound nan", ["run", "--set", "space.lr.high=nan"], "[space.lr]", "finite"),
    ("space bound inf", ["run", "--set", "space.lr.log=false", "--set", "space.lr.high=inf"], "[space.lr]", "finite"),
    ("lr infinite", ["run", "--set", "train.lr=inf"], "train.lr", "finite"),
    (
        "negative lr range",
        ["run", "--set", "space.lr.log=false", "--set", "space.lr.low=-0.1"],
        "[space.lr] can draw -0.1",
        "positive",
    ),
    (
        "unknown optimizer among choices",
        ["run", "--set", 'space.optimizer.type="categorical"', "--set", 'space.optimizer.choices=["adam", "rmsprop"]'],
        "[space.optimizer] can draw 'rmsprop'",
        "adamw",
    ),
    ("study name dot dot", ["report", "--set", "study.name=.."], "study.name", "'..'"),
    ("study name a path", ["report", "--set", "study.name=a/b"], "study.name"),
    ("phantom seed negative", ["data", "make-phantom", "ph", "--seed", "-1"], "--seed", "2^32"),
    ("image size too large", ["run", "--set", "data.image_size=20000"], "data.image_size = 20000", "above 1024"),
    ("cache size too large", ["data", "cache", ".", "--size", "5000"], "--size = 5000", "above 1024"),
    (
        "space image size too large",
        ["run", "--set", 'space.image_size.type="categorical"', "--set", "space.image_size.choices=[64, 4096]"],
        "4096 px",
        "1024",
    ),  # fmt: skip
    ("dashboard port too large", ["dashboard", "--port", "99999"], "--port", "65535"),
    ("dashboard empty host", ["dashboard", "--host", ""], "--host is empty"),
    ("dashboard unknown host", ["dashboard", "--host", "no-such-host.invalid"], "--host", "resolve"),
    ("cuda without a device", ["run", "--set", "train.device=cuda"], "train.device", "no CUDA"),  # GPUs hidden
    # a choice of the space that can only fail is refused before the first trial, not failed when drawn
    (
        "space device without a GPU",
        ["run", "--set", 'space.device.type="categorical"', "--set", 'space.device.choices=["cpu", "cuda"]'],
        "[space.device] can draw 'cuda', which cannot run here",
        "no CUDA",
    ),
    (
        "space weights offline",
        ["run", "--set", 'space.pretrained.type="categorical"',
         "--set", 'space.pretrained.choices=["none", "imagenet"]'],
        "[space.pretrained] can draw 'imagenet', which cannot run here",
        "not in the local cache",
    ),  # fmt: skip
    (
        "space unknown timm backbone",
        ["run", "--set", 'space.backbone.type="categorical"',
         "--set", 'space.backbone.choices=["timm:resnet10t", "timm:nosuch"]'],
        "[space.backbone] can draw 'timm:nosuch'",
        "unknown timm backbone",
    ),  # fmt: skip
    ("bench unknown device", ["bench", "--device", "bogus", "--only", "storage"], "device 'bogus'", "cuda:N"),
    ("bench only empty", ["bench", "--only", ""], "--only ''", "unknown benchmark"),
    # the driver's own refusal of a URL quotes the password: said in one line, the password hidden
    (
        "bench postgres bad percent-encoding",
        ["bench", "--only", "storage", "--postgres", "postgresql://bob:hunter2%zz@127.0.0.1:5432/test"],
        "--postgres postgresql://bob:***@",
        "percent-encoded",
    ),
    (
        "bench postgres unknown query",
        ["bench", "--only", "storage", "--postgres", "postgresql://bob:hunter2@127.0.0.1:5432/test?foo=bar"],
        "cannot be read",
        "foo",
    ),
]


@pytest.mark.parametrize("case", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case, capsys):
    """In this process (main(), as the CLI runs it): none of these may get as far as training."""
    _, args, *fragments = case
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    if "--study" not in args and args[0] not in ("data", "bench"):
        args = [args[0], "--study", str(study), *args[1:]]
    r = run_main(*args, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, *fragments)
    assert "hunter2" not in r.stderr + r.stdout
    assert not list(tmp_path.glob("results")) and not list(tmp_path.glob("*.db"))  # nothing written


def test_a_study_file_named_dots_is_refused(tmp_path, capsys):
    (tmp_path / "...toml").write_text(GOOD)
    r = run_main("report", "--study", str(tmp_path / "...toml"), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "study file name ...toml")


def test_a_deeply_nested_study_file_is_one_line(tmp_path, capsys):
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(
        run_main("status", "--study", str(tmp_path / "deep.toml"), cwd=tmp_path, capsys=capsys), "nested"
    )


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("[data\nsource = 1", ("TOML syntax error", "line 1")),
        ('[train]\nepochs = "five"', ("train.epochs", "whole number")),
        ('[space.lr]\ntype = "float"\nlow = 1\nhigh = 2\nwobble = 3', ("[space.lr]", "wobble")),
        ('[space.banana]\ntype = "float"\nlow = 1\nhigh = 2', ("'banana' is not a training field",)),
        ('[pruner]\nname = "sometimes"', ("pruner.name", "median")),
        ("[frobnicate]\nx = 1", ("unknown section [frobnicate]",)),
    ],
)
def test_bad_study_file_is_one_line_and_exit_2(tmp_path, text, fragments, capsys):
    """The study file is read in full to create a study (run); the commands that read an existing study
    take its settings from the study, and need the file only for its name."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_one_line_error(run_main("run", "--study", str(path), cwd=tmp_path, capsys=capsys), *fragments)
    assert not (tmp_path / "studies").exists()  # nothing made for a study that could not be created


def test_a_baseline_that_cannot_train_is_refused_before_the_search(tmp_path, capsys, monkeypatch):
    src = make_kaggle(tmp_path / "k", n=20)
    study = tmp_path / "s.toml"
    good = GOOD.replace('"phantom"', f'"{src}"')
    study.write_text(good.replace("batch_size = 8\nepochs = 1", "batch_size = 64\nepochs = 1"))
    r = run_main("run", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "baseline.batch_size = 64 is above the 14 training images")
    assert not (tmp_path / "studies" / "s.db").exists()  # refused before the study was made
    study.write_text(good.replace('pretrained = "none"\nbatch_size', "batch_size"))  # ImageNet weights, offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    r = run_main("run", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "baseline ([baseline])", "imagenet")
    assert not (tmp_path / "studies" / "s.db").exists()


def test_unwritable_study_directory_is_refused(tmp_path, capsys):
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    (tmp_path / "afile").write_text("not a directory")  # refused even for root, unlike a chmod
    r = run_main(
        "run", "--study", str(study), "--storage", f"sqlite:///{tmp_path}/afile/x.db", cwd=tmp_path, capsys=capsys
    )
    assert_one_line_error(r, "cannot create the study directory", "afile")


# (URL, the password as a driver or an error message would show it)
SECRET_URLS = [
    ("postgresql://bob:hunter2@db.example/study", "hunter2"),
    ("postgresql://bob:hunter%402@db.example/study", "hunter@2"),  # an escaped '@' in the password
    ("postgresql://bob:hun@ter2@db.example/study", "hun@ter2"),  # unescaped: SQLAlchemy would split it
    ("postgresql://bob@db.example/study?password=hunter2", "hunter2"),
    ("postgresql+psycopg2://bob@db.example/study?sslmode=require&sslpassword=hunter2", "hunter2"),
    ("postgresql:/bob:hunter2@db.example/study", "hunter2"),  # a mistyped scheme separator
    ("postgresql//bob:hunter2@db.example/study", "hunter2"),
    ("mysql://bob:hunter2@db.example/study", "hunter2"),
]


@pytest.mark.parametrize("url,password", SECRET_URLS)
def test_passwords_never_appear_in_printed_urls(url, password):
    from search.storage.study import redact_argv, redact_text, scrub

    shown = redact(url)
    assert "hun" not in shown and "ter2" not in shown and shown.startswith(url[:8])
    assert "hun" not in " ".join(redact_argv(["run", "--storage", url, f"--storage={url}"]))
    assert "hun" not in " ".join(redact_argv(["run", f"--stor={url}", f"--anything={url}", "--x", url]))
    assert "hun" not in redact_text(f"unrecognized arguments: --stor={url} '{url}'")
    assert "hun" not in scrub(f"could not connect to {url}: password {password} rejected", url)


def test_urls_without_secrets_print_as_given():
    for url in ("sqlite:///studies/demo.db", "sqlite:////abs/path/x.db", "postgresql://bob@db.example:5432/study"):
        assert redact(url) == url


@pytest.mark.parametrize("url", [u for u, _ in SECRET_URLS[-3:-1]])
def test_a_malformed_url_with_a_password_is_one_line_without_it(tmp_path, url, capsys):
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    r = run_main("status", "--study", str(study), "--storage", url, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "storage url", "not valid")
    assert "hunter2" not in r.stderr + r.stdout


def test_set_overrides_reach_the_spec(tmp_path):
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    spec = load_spec(str(study), ["train.epochs=4", "train.use_sex=true", "space.lr.high=0.05"], data_dir="/d")
    assert spec.train.epochs == 4 and spec.train.use_sex is True
    assert spec.space["lr"].high == 0.05 and spec.data.source == "/d"


@pytest.mark.parametrize(
    "sig,code,said,delay",
    [("SIGTERM", 143, "terminated (SIGTERM)", 0.0), ("SIGINT", 130, "interrupted", 1.2)],
    ids=["sigterm-parsing", "ctrl-c-importing"],
)
def test_a_signal_while_the_command_still_starts_is_one_line_and_its_exit_code(tmp_path, sig, code, said, delay):
    """Before the command runs (Python starting, arguments parsed, torch imported: seconds), Ctrl-C
    and SIGTERM end it as they do later: one line, 130 or 143, no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, _as_at_a_terminal

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "status"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_at_a_terminal,
    )
    # first the moment `python -m search` catches SIGTERM (its first act, before any import; the kernel
    # shows it in SigCgt), so the signal never lands in Python's own start-up, then `delay` more
    deadline = time.monotonic() + 30
    while not int(_sig_caught(proc.pid), 16) & (1 << (signal.SIGTERM - 1)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == f"{said}: nothing was started", err


@pytest.mark.parametrize("sig,said", [("SIGINT", "interrupted"), ("SIGTERM", "terminated (SIGTERM)")])
def test_a_signal_after_the_command_finished_says_so_and_keeps_its_exit_status(tmp_path, sig, said):
    """Once the command has printed its result, Python still shuts down (torch's teardown: a second or
    so). Ctrl-C or SIGTERM then says the command had finished and exits with its own status, not the
    loading message nor a silent 130. Here the command's status is 3 and the signal lands in a sleep."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, _as_at_a_terminal

    script = (
        "import os, signal, time\n"
        "from search.__main__ import _after_main\n"
        "_after_main(3)\n"
        f"os.kill(os.getpid(), signal.{sig})\n"
        "time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", script]
    # as at a terminal: a job started in the background inherits SIGINT ignored, and keeps it so
    r = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, preexec_fn=_as_at_a_terminal
    )
    assert r.returncode == 3 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.strip() == f"{said} while exiting: the command had finished, nothing is lost"


def _sig_caught(pid: int) -> str:
    """The process's mask of caught signals, from /proc (hex)."""
    from pathlib import Path

    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))


def test_main_hands_back_the_signal_handlers_it_found(tmp_path, capsys):
    """A program that calls main() (this test suite) can still be stopped with SIGTERM afterwards."""
    import signal

    from search.cli.main import main

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine), signal.getsignal(signal.SIGINT)
    try:
        for argv in (["status", "--study", str(tmp_path / "none.toml")], ["run", "--trials", "0"]):
            try:
                main(argv)
            except SystemExit:
                pass
            assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is before[1]
    finally:
        signal.signal(signal.SIGTERM, before[0])
