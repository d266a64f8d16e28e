"""The command line: data commands, and every bad input -> one line naming the problem, exit 2, nothing stored lost."""

from __future__ import annotations

import pytest

from search.specs import load_spec
from search.storage import redact
from tests.conftest import assert_one_line_error, make_kaggle, run_cli

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
"""


def test_data_check_reports_layout_splits_ages_sex_and_modes(official_dir, tmp_path):
    r = run_cli("data", "check", str(official_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "official RSNA release" in out
    assert "split train: 10 images" in out and "split val: 6" in out and "split test: 4" in out
    assert "age: 20.0 to" in out and "male" in out and "image modes: L x20" in out
    assert "unreadable images: 0" in out


def test_data_check_lists_unreadable_images_and_exits_2(kaggle_dir, tmp_path):
    (kaggle_dir / "boneage-training-dataset" / "1380.png").write_bytes(b"")
    r = run_cli("data", "check", str(kaggle_dir), cwd=tmp_path)
    assert r.returncode == 2 and "1380.png" in r.stdout and "unreadable images: 1" in r.stdout
    assert "Traceback" not in r.stderr


def test_make_phantom_writes_the_kaggle_layout(tmp_path):
    r = run_cli("data", "make-phantom", str(tmp_path / "ph"), "--n", "24", "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0 and "noise floor" in r.stdout
    assert len(list((tmp_path / "ph" / "boneage-training-dataset").glob("*.png"))) == 24
    r = run_cli("data", "check", str(tmp_path / "ph"), cwd=tmp_path)
    assert r.returncode == 0 and "Kaggle copy" in r.stdout


def test_data_cache_decodes_a_directory(kaggle_dir, tmp_path):
    r = run_cli("data", "cache", str(kaggle_dir), "--size", "32", cwd=tmp_path)
    assert r.returncode == 0 and "cached 12 images at 32 px" in r.stdout


BAD_ARGS = [
    ("trials zero", ["run", "--trials", "0"], "--trials", "at least 1"),
    ("trials negative", ["run", "--trials", "-3"], "--trials"),
    ("trials not a number", ["run", "--trials", "many"], "--trials", "'many'"),
    ("baseline seeds zero", ["baseline", "--seeds", "0"], "--seeds", "at least 1"),
    ("unknown study", ["run", "--study", "nosuch"], "unknown study 'nosuch'"),
    ("unknown key", ["run", "--set", "train.learning_rate=0.1"], "train.learning_rate"),
    ("unknown section", ["run", "--set", "trian.lr=0.1"], "trian.lr"),
    ("wrong type", ["run", "--set", "train.epochs=many"], "train.epochs", "int"),
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
    ("weights file missing", ["baseline", "--set", 'train.pretrained="/no/such.pth"'], "/no/such.pth"),
    ("unreachable postgres", ["status", "--storage", "postgresql://bob:hunter2@127.0.0.1:1/x"], "cannot open"),
]


@pytest.mark.parametrize("case", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    _, args, *fragments = case
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    if "--study" not in args:
        args = [args[0], "--study", str(study), *args[1:]]
    r = run_cli(*args, cwd=tmp_path, timeout=120)
    assert_one_line_error(r, *fragments)
    assert "hunter2" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("[data\nsource = 1", ("TOML syntax error", "line 1")),
        ('[train]\nepochs = "five"', ("train.epochs", "int")),
        ('[space.lr]\ntype = "float"\nlow = 1\nhigh = 2\nwobble = 3', ("[space.lr]", "wobble")),
        ('[space.banana]\ntype = "float"\nlow = 1\nhigh = 2', ("'banana' is not a training field",)),
        ('[pruner]\nname = "sometimes"', ("pruner.name", "median")),
        ("[frobnicate]\nx = 1", ("unknown section [frobnicate]",)),
    ],
)
def test_bad_study_file_is_one_line_and_exit_2(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_one_line_error(run_cli("status", "--study", str(path), cwd=tmp_path), *fragments)


def test_batch_size_above_the_training_set_fails_the_trial_not_the_program(tmp_path):
    src = make_kaggle(tmp_path / "k", n=20)
    study = tmp_path / "s.toml"
    study.write_text(GOOD.replace('"phantom"', f'"{src}"') + "\n[baseline]\nbatch_size = 64\n")
    r = run_cli("baseline", "--study", str(study), cwd=tmp_path)
    assert_one_line_error(r, "batch_size = 64 is above the 14 training images")


def test_unwritable_study_directory_is_refused(tmp_path):
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    (tmp_path / "afile").write_text("not a directory")  # refused even for root, unlike a chmod
    r = run_cli("status", "--study", str(study), "--storage", f"sqlite:///{tmp_path}/afile/x.db", cwd=tmp_path)
    assert_one_line_error(r, "cannot create the study directory", "afile")


def test_passwords_never_appear_in_printed_urls():
    assert redact("postgresql://bob:hunter2@db.example/study") == "postgresql://bob:***@db.example/study"
    assert redact("sqlite:///studies/demo.db") == "sqlite:///studies/demo.db"


def test_set_overrides_reach_the_spec(tmp_path):
    study = tmp_path / "good.toml"
    study.write_text(GOOD)
    spec = load_spec(str(study), ["train.epochs=4", "train.use_sex=true", "space.lr.high=0.05"], data_dir="/d")
    assert spec.train.epochs == 4 and spec.train.use_sex is True
    assert spec.space["lr"].high == 0.05 and spec.data["source"] == "/d"
