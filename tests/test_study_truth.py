"""The study is the source of truth once created: later commands take its settings from the study, not
from the study file or a repeat of the creation flags; a differing setting stops before any image is
decoded; results are typed objects stored in the study, read alike from any directory; every printed
next step can be pasted."""

from __future__ import annotations

import json
import shlex

import optuna
import pytest

from boneage_core.metrics import verdict
from search.storage.results import RetrainResult, from_json, load_baseline, load_retrain, to_json
from tests.conftest import assert_one_line_error, load, main_ok, run_cli, run_main


def _note(study: optuna.Study) -> str:
    """The study's note as optuna-dashboard shows it."""
    from optuna_dashboard import get_note

    return get_note(study)


def test_a_study_made_with_set_goes_through_every_command_without_repeating_it(tmp_path, study, private_cache, capsys):
    """Created with --set train.*, data.* and baseline.*, the study file then edited: baseline, retrain
    (top-2, bias correction), report, status and the note all use what the study was created with; a
    setting that differs stops before any image is decoded; every hint carries --study and --storage."""
    created = ["--set", "train.epochs=1", "--set", "data.seed=3", "--set", "baseline.epochs=1"]
    main_ok("run", "--study", str(study), "--trials", "3", *created, "--quiet", cwd=tmp_path, capsys=capsys)

    cached = sorted(p.relative_to(private_cache) for p in private_cache.rglob("*"))
    for command in ("baseline", "retrain", "report", "status", "run", "dashboard"):
        r = run_main(command, "--study", str(study), "--set", "data.image_size=48", cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, "created with data.image_size = 32", "gives 48", "--set study.name=")
    for change, named in (("train.lr=0.01", "searches lr"), ("pruner.name=none", "pruner.name")):
        r = run_main("baseline", "--study", str(study), "--set", change, cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, named)
    assert sorted(p.relative_to(private_cache) for p in private_cache.rglob("*")) == cached  # nothing decoded

    text = study.read_text().replace("epochs = 2", "epochs = 4")  # [train] and [baseline] edited afterwards
    study.write_text(text)
    hint = main_ok("status", "--study", str(study), cwd=tmp_path, capsys=capsys).stdout
    assert f"baseline: not run yet (python -m search baseline --study {study})" in hint
    url = f"sqlite:///{tmp_path}/studies/tiny.db"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hint = main_ok("status", "--study", "tiny", "--storage", url, cwd=elsewhere, capsys=capsys).stdout
    assert f"(python -m search baseline --study tiny --storage {url})" in hint
    assert f"(python -m search retrain --study tiny --storage {url})" in hint
    r = run_main("status", "--study", "nothing", "--storage", url, cwd=elsewhere, capsys=capsys)
    assert_one_line_error(r, "no study 'nothing'", f"python -m search run --study nothing --storage {url}")

    main_ok("baseline", "--study", str(study), "--seeds", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    retrain = ["retrain", "--study", str(study), "--seeds", "2", "--top-k", "2", "--bias-correction"]
    main_ok(*retrain, "--set", "baseline.lr=0.003", cwd=tmp_path, capsys=capsys)  # the one deliberate change
    s = load(tmp_path)
    base, out = load_baseline(s), load_retrain(s)
    assert base.config["epochs"] == 1 and out.recipes["baseline"].config["epochs"] == 1
    assert out.recipes["best"].config["epochs"] == 1 and all(m.config["epochs"] == 1 for m in out.members)
    assert out.recipes["baseline"].config["lr"] == 0.003 and out.recipes["best"].config["lr"] != 0.003
    assert out.baseline_modified == {"lr": [0.001, 0.003]} and out.overrides["best"] == {}
    assert set(out.recipes) == {"best", "best_corrected", "ensemble", "ensemble_corrected", "baseline"}
    assert s.user_attrs["settings"]["data"]["seed"] == 3

    # a run resumed without the flags keeps the study's settings and says the file differs
    r = main_ok("run", "--study", str(study), "--trials", "4", cwd=tmp_path, capsys=capsys)
    assert "its stored settings" in r.stdout and "differs from the study's stored settings" in r.stdout
    trials = load(tmp_path).get_trials()
    assert all(t.system_attrs["config"]["epochs"] == 1 for t in trials if "config" in t.system_attrs)

    # report and status from another directory on the same storage: the same numbers and page
    main_ok("report", "--study", str(study), cwd=tmp_path, capsys=capsys)
    main_ok("report", "--study", "tiny", "--storage", url, cwd=elsewhere, capsys=capsys)
    here, there = (d / "results" / "tiny" for d in (tmp_path, elsewhere))

    def numbers(folder):
        summary = json.loads((folder / "summary.json").read_text())
        return {k: v for k, v in summary.items() if k not in ("report_command", "hint")}

    assert numbers(here) == numbers(there) and numbers(here)["test"]["best_trial"] == out.best_trial
    test = numbers(here)["test"]  # every row one set of predictions, every CI around its estimate
    for name, row in test["recipes"].items():
        rows = [row["metrics_mean"], row["seed_ensemble"], *row["metrics_per_seed"]]
        assert all(r["rmse_months"] >= r["mae_months"] for r in rows), name
        assert row["metrics_mean"]["mae_months"] == pytest.approx(row["mae"]["mean"])
        assert row["mae"]["ci_low"] <= row["mae"]["mean"] <= row["mae"]["ci_high"]
    n, d = test["group_n"], test["best_minus_baseline"]
    assert n["male"] + n["female"] == sum(v for k, v in n.items() if k not in ("male", "female")) == out.n_test
    assert d["ci_low"] <= d["mae_diff_months"] <= d["ci_high"] and d["verdict"] == verdict(d)
    md = (there / "summary.md").read_text()
    block = md.split("## How this was produced")[1].split("```")[1].strip().splitlines()
    assert [line.split(" --")[0] for line in block] == [
        f"python -m search {c}" for c in ("run", "baseline", "retrain", "run", "report")
    ]
    assert block[2] == shlex.join(["python", "-m", "search", *retrain, "--set", "baseline.lr=0.003"])
    # created with --set baseline.epochs=1 the baseline is the study's own; retrain's --set modified it
    page = (there / "index.html").read_text()
    assert "<strong>Verdict</strong>" in page and "| modified baseline |" in md and "| baseline |" not in md
    assert "between the best recipe and the modified baseline" in md or "than the modified baseline" in md
    assert "| baseline, seed 0 |" in md  # the val table's baseline is the study's, unmodified
    status_here = main_ok("status", "--study", str(study), cwd=tmp_path, capsys=capsys).stdout
    status_there = main_ok("status", "--study", "tiny", "--storage", url, cwd=elsewhere, capsys=capsys).stdout

    def numbers_of(status: str) -> list[str]:  # the hints and the storage differ: they say how each was reached
        return [line for line in status.splitlines() if "python -m search" not in line and "sqlite:" not in line]

    assert numbers_of(status_here) == numbers_of(status_there)
    # a terminal that cannot show ± (LC_ALL=C, an ASCII stream) gets '?' in its place, not a traceback
    ascii_env = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii"}
    plain = run_cli("status", "--study", "tiny", "--storage", url, cwd=elsewhere, env=ascii_env)
    assert plain.returncode == 0 and "Traceback" not in plain.stderr, plain.stderr
    assert "±" in status_there and plain.stdout.splitlines() == status_there.replace("±", "?").splitlines()
    if load(tmp_path).best_trial.number != out.best_trial:  # the resumed run found a better trial
        assert f"the final test scored trial {out.best_trial}; the search has since found" in status_here
    assert f"final test (2 seeds, {out.n_test} images)" in status_there and d["verdict"] in status_there
    assert (
        "the modified baseline" in status_there
        and "baseline changed for this retrain: lr 0.001 -> 0.003" in status_there
    )

    # the note keeps the verdict whichever command wrote it last
    main_ok("baseline", "--study", str(study), "--seeds", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    note = _note(load(tmp_path))
    assert "**Verdict**" in note and "## Final test" in note and "baseline, mean ± SD over 1 seed |" in note

    # the stored result is typed data, retrain.json a copy of it; a damaged one is one line
    assert from_json(RetrainResult, to_json(out)) == out and len(out.recipes["best"].pred_months[0]) == out.n_test
    assert json.loads((here / "retrain.json").read_text()) == to_json(out)
    broken = to_json(out)
    del broken["recipes"]["best"]["mae"]
    load(tmp_path).set_user_attr("result:retrain", broken)
    for command in ("status", "report"):
        r = run_main(command, "--study", str(study), cwd=tmp_path, capsys=capsys)
        rerun = f"rerun `python -m search retrain --study {study}`"
        assert_one_line_error(r, "cannot read", "RetrainResult.recipes.best", "lacks the field 'mae'", rerun)
    # baseline's own result is stored; the note it cannot rewrite is said, not an error
    r = main_ok("baseline", "--study", str(study), "--seeds", "1", "--quiet", cwd=tmp_path, capsys=capsys)
    assert "warning: the dashboard note was not rewritten" in r.stderr
    assert load_baseline(load(tmp_path)).command["argv"][-1] == "--quiet"


def test_studies_this_version_cannot_rebuild_are_one_line(tmp_path, study, capsys):
    url = f"sqlite:///{tmp_path}/studies/tiny.db"
    (tmp_path / "studies").mkdir()
    plain = optuna.create_study(study_name="tiny", storage=url)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    for command in ("status", "report", "baseline", "run"):
        r = run_main(command, "--study", str(study), cwd=tmp_path, capsys=capsys)
        assert_one_line_error(r, "holds no boneage-search settings")
    plain.set_user_attr("settings", {"data": {}, "train": {}, "baseline": {}, "space": {}})  # as 0.1 wrote them
    r = run_main("status", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "made by an older version")
    plain.set_user_attr("settings", {"format": 2, "data": {}, "train": {}, "space": "x"})  # edited by hand
    r = run_main("status", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "holds settings this version cannot read", "restore a copy")
    r = run_main("status", "--study", "x" * 101, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "101 characters long", "at most 100")


def test_data_dir_is_taken_as_given(tmp_path):
    """--data DIR is the data's path as typed: a backslash or a quote in it is no TOML to parse."""
    from search.config.specs import apply_given

    odd = str(tmp_path / 'a \\ b\'s "dir"')
    assert apply_given({"data": {"source": "phantom"}}, [], odd)["data"]["source"] == odd


def test_results_are_read_from_a_postgresql_study_in_any_directory(tmp_path, study, postgres_url, capsys):
    """The result lives in the database: a machine with another working directory (no results/, no
    study file) reads the same verdict from the same storage."""
    one = ("--storage", postgres_url, "--quiet")
    main_ok("run", "--study", str(study), "--trials", "2", *one, cwd=tmp_path, capsys=capsys)
    main_ok("retrain", "--study", str(study), "--seeds", "2", *one, cwd=tmp_path, capsys=capsys)
    other = tmp_path / "other-machine"
    other.mkdir()
    status = main_ok("status", "--study", "tiny", "--storage", postgres_url, cwd=other, capsys=capsys).stdout
    out = load_retrain(optuna.load_study(study_name="tiny", storage=postgres_url))
    best = out.recipes["best"].mae
    assert f"best (trial {out.best_trial}) {best.mean:.2f} ± {best.sd:.2f}" in status
    main_ok("report", "--study", "tiny", "--storage", postgres_url, cwd=other, capsys=capsys)
    md = (other / "results" / "tiny" / "summary.md").read_text()
    assert "**Verdict** (final test, 2 seeds per recipe)" in md and f"| best (trial {out.best_trial}) |" in md
