"""Trustworthy verdicts: one set of settings per study, a fixed baseline, checkpoints that cannot be
stale, recorded provenance, status in the right words, and nothing made for a study that does not
exist. (The seed-aware statistics themselves are tested in test_augment_metrics.)"""

from __future__ import annotations

import optuna
import pytest

from boneage_core.config import BASELINE
from search.config.specs import load_spec
from search.reporting.report import status_text
from search.storage.results import BaselineResult, store
from search.storage.truth import StudyRef
from tests.conftest import assert_one_line_error, load, main_ok, run_main


def test_the_baseline_is_the_original_projects_recipe_and_train_settings_never_move_it(study):
    demo = load_spec("demo")
    learned = ("epochs", "batch_size", "optimizer", "lr", "schedule", "loss", "use_sex", "aug_strength")
    assert all(getattr(demo.baseline, f) == getattr(BASELINE, f) for f in learned)
    assert demo.baseline.aug_intensity is False and demo.baseline.backbone == "resnet50"
    assert (demo.baseline.epochs, demo.baseline.lr, demo.baseline.schedule) == (5, 1e-3, "none")
    assert load_spec("demo", ["train.lr=0.5", "train.epochs=9", "train.loss=l1"]).baseline == demo.baseline
    assert load_spec(str(study), ["baseline.lr=0.01"]).baseline.lr == 0.01


def test_a_second_run_with_other_settings_is_refused_and_the_study_kept(tmp_path, study, other_phantom, capsys):
    main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    before = load(tmp_path)
    settings, n = before.user_attrs["settings"], len(before.get_trials())
    for extra, fragments in (
        (["--set", "data.max_images=20"], ("data.max_images = 0", "gives 20")),
        (["--set", "train.epochs=1"], ("train.epochs = 2", "gives 1")),
        (["--set", "baseline.lr=0.01"], ("baseline.lr = 0.001", "gives 0.01")),
    ):
        r = run_main("run", "--study", str(study), "--trials", "2", *extra, "--quiet", cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, *fragments, "--set study.name=")
    r = run_main("run", "--study", str(study), "--data", str(other_phantom), "--quiet", cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "other data", "fingerprint")
    for command in ("baseline", "report"):  # held to the same settings
        r = run_main(command, "--study", str(study), "--set", "train.epochs=1", "--quiet", cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, "train.epochs = 2")
    after = load(tmp_path)
    assert len(after.get_trials()) == n and after.user_attrs["settings"] == settings
    # settings that cannot change a result stay free
    main_ok(
        "run",
        "--study",
        str(study),
        "--trials",
        "2",
        "--set",
        "train.device=cpu",
        "--quiet",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert len(load(tmp_path).get_trials()) == 2


def test_a_changed_dataset_trains_new_checkpoints_and_scores_its_own_test_images(
    tmp_path, study, phantom_src, other_phantom, capsys
):
    def run_and_retrain():
        main_ok("run", "--study", str(study), "--trials", "1", "--quiet", cwd=tmp_path, capsys=capsys)
        main_ok(
            "retrain", "--study", str(study), "--seeds", "1", "--set", "train.epochs=1", cwd=tmp_path, capsys=capsys
        )
        preds = (tmp_path / "results" / "tiny" / "predictions_best_seed0.csv").read_text().splitlines()
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints" / "tiny").glob("*.pt")}, preds

    first, first_preds = run_and_retrain()
    assert len(first) == 2  # best and baseline, one seed each
    (tmp_path / "studies" / "tiny.db").unlink()  # a new study of the same name, on other data
    study.write_text(study.read_text().replace(str(phantom_src), str(other_phantom)))
    both, second_preds = run_and_retrain()
    assert len(both) == 4 and all(both[name] == mtime for name, mtime in first.items())  # old ones untouched
    assert {line.split(",")[0] for line in first_preds[1:]} != {line.split(",")[0] for line in second_preds[1:]}


@pytest.mark.parametrize("command", ["status", "report", "retrain", "baseline"])
def test_a_study_that_does_not_exist_is_one_line_and_makes_no_file(tmp_path, study, command, capsys):
    r = run_main(command, "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "no study storage", "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_a_storage_without_the_study_names_the_ones_it_holds(tmp_path, study, capsys):
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    r = run_main("status", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "no study 'tiny'", "it holds other")


def _study_with(best: float, seeds: list[float]) -> optuna.Study:
    s = optuna.create_study(study_name="words")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    s.add_trial(optuna.trial.create_trial(value=best, params={"lr": 1e-3}, distributions={"lr": lr}))
    base = BaselineResult(sum(seeds) / len(seeds), seeds, None, 30.0, [], [], {}, 1.0)
    store(s, base)
    return s


@pytest.mark.parametrize(
    "best,seeds,words",
    [
        (18.0, [14.0, 16.0], ("20.0% higher", "above all 2 of its seeds")),
        (12.0, [14.0, 16.0], ("20.0% lower", "below all 2 of its seeds")),
        (15.5, [14.0, 16.0], ("3.3% higher", "inside the range of its 2 seeds")),
    ],
)
def test_status_says_higher_or_lower_with_the_right_sign(best, seeds, words):
    text = status_text(_study_with(best, seeds), StudyRef("words", "sqlite:///words.db", None))
    assert all(w in text for w in words), text
    assert "final test: not run yet" in text
