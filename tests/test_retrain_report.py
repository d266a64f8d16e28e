"""Retrain and report: the best params exactly, resume after kill -9, bootstrap CIs, report files."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from boneage_core import BoneAgeError
from boneage_core.config import DataSettings, TrainConfig
from boneage_core.dataset import prepare
from boneage_core.metrics import apply_correction, bootstrap_ci, linear_correction, paired_mae_difference, verdict
from search.engine.plan import Planned, Recipes, recipes
from search.engine.retrain import bias_corrections
from search.reporting.figures import FIGURES
from search.storage.results import load_baseline, load_retrain
from search.storage.trials import trial_data
from search.storage.truth import spec_from_study, study_ref
from tests.browser import CHROMIUM, check_page
from tests.conftest import REPO, assert_one_line_error, load, main_ok, run_main


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    small, large = rng.exponential(10, 50), rng.exponential(10, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # about sqrt(40) = 6 times narrower


def test_paired_difference_sees_a_better_model():
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 220, 300)
    good, bad = true + rng.normal(0, 5, 300), true + rng.normal(0, 15, 300)
    d = paired_mae_difference(abs(good - true), abs(bad - true))
    assert d["ci_high"] < 0 < -d["mae_diff_months"] and d["p_a_not_better"] < 0.01


@pytest.fixture
def searched(tmp_path, study, capsys):
    main_ok("run", "--study", str(study), "--trials", "3", "--quiet", cwd=tmp_path, capsys=capsys)
    return study


def test_retrain_rebuilds_exactly_the_best_trials_config(tmp_path, searched):
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    searched.write_text(searched.read_text().replace("epochs = 2", "epochs = 7"))  # edited since: ignored
    spec = spec_from_study(s, study_ref(str(searched), f"sqlite:///{tmp_path}/studies/tiny.db", []), [])
    best = recipes(s, spec, {}).configs["best"]
    assert best.to_dict() == trial_data(s.best_trial, "config")
    plan = recipes(s, spec, {"epochs": 1})  # an explicit --set train.* changes the best recipe on purpose
    assert plan.configs["best"].epochs == 1 and plan.overrides["best"] == {"epochs": [2, 1]}
    assert plan.configs["baseline"].epochs == 2 and not plan.baseline_modified  # and never the baseline
    modified = recipes(s, spec, {}, {"epochs": 3})  # --set baseline.* changes the baseline, said so
    assert modified.configs["baseline"].epochs == 3 and modified.baseline_modified == {"epochs": [2, 3]}
    assert modified.configs["best"] == best


def test_retrain_without_a_completed_trial_is_a_clear_error(tmp_path, study, capsys, monkeypatch):
    from search.config.specs import load_spec
    from search.engine.run import _open_for_search

    monkeypatch.chdir(tmp_path)
    _open_for_search(load_spec(str(study)), "sqlite:///studies/tiny.db", quiet=True, index=0)  # created, no trial
    r = run_main("retrain", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "no completed trial", f"python -m search run --study {study}")


class _Page(HTMLParser):
    """The parts of a figure page that make it work offline: its scripts and its plot's div."""

    def __init__(self):
        super().__init__()
        self.script_srcs, self.plot_divs, self.title = [], 0, ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.script_srcs.append(a["src"])
        if tag == "div" and "plotly-graph-div" in (a.get("class") or ""):
            self.plot_divs += 1


def test_killed_retrain_resumes_from_its_checkpoint_then_reports(tmp_path, searched, capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "search", "retrain", "--study", str(searched), "--set", "train.epochs=3", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "checkpoints" / "tiny"
    deadline = time.monotonic() + 120
    while not list(ckpts.glob("best-seed0-*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    (ckpt,) = ckpts.glob("best-seed0-*.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = json.loads(torch.load(ckpt, weights_only=True)["history"])
    assert 1 <= len(before) < 3
    again = ("--set", "train.epochs=3", "--seeds", "2", "--tta")
    r = main_ok("retrain", "--study", str(searched), *again, cwd=tmp_path, capsys=capsys)
    after = json.loads(torch.load(ckpt, weights_only=True)["history"])
    assert len(after) == 3
    assert after[: len(before)] == before  # the epochs before the kill were not trained again
    out = load_retrain(load(tmp_path))
    for name in ("best", "baseline"):
        e = out.recipes[name]
        assert len(e.mae_per_seed) == 2 and e.mae.ci_low <= np.mean(e.mae_per_seed) <= e.mae.ci_high
        assert e.tta_flip is not None
    preds = (tmp_path / "results" / "tiny" / "predictions_best_seed1.csv").read_text().splitlines()
    assert preds[0] == "id,age_months,male,pred_months" and len(preds) == 1 + out.n_test == 7
    assert f"on the same {out.n_test} test images" in r.stdout and "baseline" in r.stdout

    main_ok("baseline", "--study", str(searched), "--quiet", cwd=tmp_path, capsys=capsys)
    main_ok("report", "--study", str(searched), cwd=tmp_path, capsys=capsys)
    res = tmp_path / "results" / "tiny"
    for name in (
        "summary.md",
        "summary.json",
        "trials.csv",
        "index.html",
        "plotly.min.js",
        "optimization_history.html",
        "intermediate_values.html",
        "param_importances.html",
        "parallel_coordinate.html",
        "slice.html",
        "predicted_vs_true.html",
        "bland_altman.html",
        "mae_by_group.html",
        "baseline_vs_best.html",
    ):
        assert (res / name).is_file(), name
    for page in res.glob("*.html"):
        if page.name == "index.html":
            continue
        parsed = _Page()
        parsed.feed(page.read_text())
        assert parsed.script_srcs == ["plotly.min.js"] and parsed.plot_divs == 1, page.name  # shared, offline
        assert page.stat().st_size < 1_000_000, page.name  # plotly.js is not embedded
    summary = (res / "summary.md").read_text()
    assert "baseline" in summary and "Final test" in summary and "95% CI" in summary
    assert "PNG copies" in summary
    assert json.loads((res / "summary.json").read_text())["trials"]["complete"] >= 1


def test_png_copies_are_drawn_unless_turned_off(tmp_path, searched, capsys, monkeypatch):
    """The suite turns PNG copies off (BONEAGE_PNG=0, tests/conftest.py): the report says so and draws
    none. Turned back on, every figure gets a PNG where kaleido and a Chromium are installed."""
    main_ok("report", "--study", str(searched), cwd=tmp_path, capsys=capsys)
    res = tmp_path / "results" / "tiny"
    pages = sorted(p.stem for p in res.glob("*.html") if p.name != "index.html")
    assert len(pages) >= 4 and not list(res.glob("*.png"))
    assert "PNG copies: not written: turned off (BONEAGE_PNG=0)." in (res / "index.html").read_text()
    try:
        import kaleido  # noqa: F401
    except ImportError:
        pytest.skip("kaleido is not installed (the [png] extra)")
    if CHROMIUM is None:
        pytest.skip("no Chromium for kaleido to draw with")
    monkeypatch.delenv("BONEAGE_PNG")
    main_ok("report", "--study", str(searched), cwd=tmp_path, capsys=capsys)
    assert sorted(p.stem for p in res.glob("*.png")) == pages
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in res.glob("*.png"))
    assert "PNG copies: written beside this page." in (res / "index.html").read_text()


def test_image_size_joins_the_space_by_editing_toml_only(tmp_path, study, capsys):
    """Each trial trains at the size it drew (decoded once per size); retrain rebuilds the best trial at
    its size and the baseline at data.image_size, both scored on the same test images."""
    study.write_text(study.read_text() + '[space.image_size]\ntype = "categorical"\nchoices = [32, 48]\n')
    main_ok("run", "--study", str(study), "--trials", "4", "--quiet", cwd=tmp_path, capsys=capsys)
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    done = [t for t in s.trials if t.state.is_finished()]
    assert len(done) == 4
    for t in done:
        assert trial_data(t, "config")["image_size"] == t.params["image_size"]
    assert {t.params["image_size"] for t in done} == {32, 48}  # seeded: both sizes drawn in 4 trials

    one = ("--set", "train.epochs=1", "--seeds", "1", "--quiet")
    main_ok("retrain", "--study", str(study), *one, cwd=tmp_path, capsys=capsys)
    out = load_retrain(load(tmp_path))
    assert out.recipes["best"].config["image_size"] == s.best_trial.params["image_size"]
    assert out.recipes["baseline"].config["image_size"] == 32
    ids = [
        [
            line.split(",")[0]
            for line in (tmp_path / "results" / "tiny" / f"predictions_{n}_seed0.csv").read_text().splitlines()
        ]
        for n in ("best", "baseline")
    ]
    assert ids[0] == ids[1] and len(ids[0]) == 1 + out.n_test


def test_image_size_in_the_space_below_the_backbone_minimum_is_one_line(tmp_path, study, capsys):
    study.write_text(study.read_text() + '[space.image_size]\ntype = "categorical"\nchoices = [16, 32]\n')
    r = run_main("run", "--study", str(study), cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "[space.image_size]", "16 px")




# What Chromium asks of its own servers whatever the page (updates, sign-in, network time), with these
# switches on
BROWSER_CHATTER = ("update.googleapis.com", "accounts.google.com", "clients2.google.com")
QUIET_BROWSER = [
    *("--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"),
    *("--disable-default-apps", "--metrics-recording-only", "--no-pings", "--disable-domain-reliability"),
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
    *("--disable-breakpad", "--no-default-browser-check"),
    *("--disable-client-side-phishing-detection", "--safebrowsing-disable-auto-update"),
]


SPACE_KINDS = """
[space.loss]
type = "categorical"
choices = ["mse", "l1"]
[space.use_sex]
type = "categorical"
choices = [true, false]
"""


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A proxy that answers nothing and remembers every request: the page must send none."""

    seen: list[str] = []

    def _record(self):
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.end_headers()

    do_GET = do_POST = do_CONNECT = do_HEAD = _record

    def log_message(self, *args):
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_report_page_shows_the_studys_numbers_and_draws_every_figure_offline_in_a_browser(tmp_path, study, capsys):
    # a categorical, a boolean and a log-searched float in the space: the axes a reader misreads first
    study.write_text(study.read_text() + SPACE_KINDS)
    retrain = ["retrain", "--seeds", "2", "--top-k", "2", "--bias-correction"]
    for command in (["run", "--trials", "4"], ["baseline", "--seeds", "2"], retrain, ["report"]):
        main_ok(*command, "--study", str(study), "--quiet", cwd=tmp_path, capsys=capsys)
    page = tmp_path / "results" / "tiny" / "index.html"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    try:
        quiet_browser = ["--disable-background-networking", "--disable-component-update", "--no-first-run",
                         "--disable-sync", "--disable-default-apps", "--metrics-recording-only"]  # fmt: skip
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                *quiet_browser,
                f"--proxy-server=http://127.0.0.1:{server.server_address[1]}",
                "--proxy-bypass-list=<-loopback>",
                "--virtual-time-budget=30000",
                "--dump-dom",
                page.as_uri(),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
    finally:
        server.shutdown()
    assert [r for r in _Recorder.seen if not any(host in r for host in BROWSER_CHATTER)] == []  # nothing left file://
    figures = dict(re.findall(r'<figure id="(\w+)">(.*?)</figure>', dom, flags=re.S))
    assert list(figures) == [n for n in FIGURES if n in figures] and len(figures) == len(FIGURES)
    for name, html in figures.items():  # plotly drew it: an SVG with traces in it
        assert "main-svg" in html and re.search(r'class="[^"]*\btrace\b', html), name
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    base, out = load_baseline(s), load_retrain(s)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", dom)
    assert f"{s.best_value:.2f}" in cells and f"{base.val_mae_months:.2f} ± {base.val_mae_sd:.2f}" in cells
    assert any(c.startswith(f"{out.recipes['best'].mae.mean:.2f} ± ") for c in cells)
    assert "<strong>Verdict</strong>" in dom
    # as a person sees it, at a laptop's width and a narrow window's: no number wrapped in its cell, no
    # two labels of a figure on each other, no mode-bar button that sends the chart away
    for width in (800, 1400):
        seen = check_page(page, width, tuple(QUIET_BROWSER))
        assert seen["width"] == width and seen["figures"] == len(FIGURES) and seen["texts"] > 100, seen
        assert seen["wrapped"] == [] and seen["overlaps"] == [] and seen["cloud"] == [], (width, seen)


def test_linear_correction_undoes_shrinkage_toward_the_mean():
    rng = np.random.default_rng(0)
    true = rng.uniform(10, 220, 200)
    shrunk = 127 + 0.8 * (true - 127) + rng.normal(0, 2, 200)  # young read too old, old too young
    line = linear_correction(shrunk, true)
    assert line["slope"] == pytest.approx(1.25, abs=0.03) and line["intercept"] == pytest.approx(-31.75, abs=4)
    corrected = apply_correction(shrunk, line)
    assert np.abs(corrected - true).mean() < np.abs(shrunk - true).mean() / 3
    with pytest.raises(ValueError, match="vary"):
        linear_correction(np.full(5, 100.0), true[:5])


def test_top_k_ensemble_and_bias_correction_end_to_end(tmp_path, study, phantom_src, capsys):
    """The K best distinct configurations each retrained, their per-seed average scored as a recipe with
    seed-aware CIs; each tuned model corrected by a line fitted on its trials' own val predictions; the
    report sets them beside the best and the baseline; a rerun reuses every checkpoint."""
    main_ok("run", "--study", str(study), "--trials", "4", "--quiet", cwd=tmp_path, capsys=capsys)
    s = load(tmp_path)
    argv = ("retrain", "--study", str(study), "--top-k", "2", "--bias-correction", "--seeds", "2", "--quiet")
    r = main_ok(*argv, cwd=tmp_path, capsys=capsys)
    res = tmp_path / "results" / "tiny"
    out = load_retrain(load(tmp_path))
    assert json.loads((res / "retrain.json").read_text())["top_k"] == 2  # the copy beside the predictions

    done = sorted((t for t in s.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert [m.trial for m in out.members] == [t.number for t in done[:2]]  # the two best, best first
    assert out.members[0].params != out.members[1].params and out.top_k == 2
    assert list(out.recipes) == ["best", "best_corrected", "ensemble", "ensemble_corrected", "baseline"]

    def preds(name):
        return np.array([pd.read_csv(res / f"predictions_{name}_seed{k}.csv").pred_months for k in range(2)])

    ensemble = (preds("best") + preds("top2")) / 2  # per seed k: the average of the members' seed-k models
    assert np.allclose(preds("ensemble"), ensemble, atol=2e-3)
    val = prepare(DataSettings(source=str(phantom_src), image_size=32, phantom_n=40), splits=("val",)).split("val")
    trial_val = np.mean([t.system_attrs["val_pred_months"] for t in done[:2]], axis=0)
    line = out.bias_correction["ensemble"]
    slope, intercept = np.polyfit(trial_val, val.age_months, 1)  # fitted on val, never on test
    assert line.slope == pytest.approx(slope, rel=1e-6) and line.intercept == pytest.approx(intercept, rel=1e-6)
    assert np.allclose(preds("ensemble_corrected"), slope * preds("ensemble") + intercept, atol=0.05)
    for name, e in out.recipes.items():
        assert e.mae.ci_low <= e.mae.mean <= e.mae.ci_high, name
        assert e.mae.seeds == 2 and np.allclose(e.pred_months, preds(name), atol=1e-3)
    for key, d in out.comparisons.items():
        assert d.verdict == verdict(d.__dict__) and d.seeds_a == d.seeds_b == 2, key
    assert {"ensemble_minus_baseline", "ensemble_minus_best", "ensemble_corrected_minus_ensemble"} <= set(
        out.comparisons
    )
    assert "top-2 ensemble (trials" in r.stdout and "bias-corrected top-2 ensemble" in r.stdout

    main_ok("report", "--study", str(study), cwd=tmp_path, capsys=capsys)
    md = (res / "summary.md").read_text()
    assert f"| top-2 ensemble (trials {done[0].number}, {done[1].number}) |" in md
    assert "| rank | trial |" in md and "Bias correction" in md
    assert "top-2 ensemble" in main_ok("status", "--study", str(study), cwd=tmp_path, capsys=capsys).stdout

    ckpts = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints" / "tiny").glob("*.pt")}
    assert len(ckpts) == 6  # best, top2 and the baseline, two seeds each
    main_ok("retrain", "--study", str(study), "--top-k", "2", "--seeds", "2", "--quiet", cwd=tmp_path, capsys=capsys)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints" / "tiny").glob("*.pt")} == ckpts
    again = load_retrain(load(tmp_path))
    assert list(again.recipes) == ["best", "ensemble", "baseline"]  # no correction asked for this time
    assert not list(res.glob("predictions_*corrected_seed*.csv"))  # nor left from the last retrain


def test_top_k_beyond_the_distinct_configurations_and_stale_corrections_are_one_line(tmp_path, study, capsys):
    main_ok("run", "--study", str(study), "--trials", "3", "--quiet", cwd=tmp_path, capsys=capsys)
    n = len({json.dumps(t.params) for t in load(tmp_path).trials if t.state.name == "COMPLETE"})
    r = run_main("retrain", "--study", str(study), "--top-k", "9", "--quiet", cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "--top-k 9", "distinct", f"{n} or fewer")
    stale = ("--bias-correction", "--set", "train.epochs=1", "--quiet")
    r = run_main("retrain", "--study", str(study), *stale, cwd=tmp_path, capsys=capsys)
    assert_one_line_error(r, "--bias-correction", "--set train.")
    assert not (tmp_path / "checkpoints").exists()  # refused before anything trained


def test_bias_correction_needs_the_trials_val_predictions():
    cfg = TrainConfig()
    member = Planned(rank=1, trial=3, val_mae_months=9.0, params={}, config=cfg, val_pred_months=None)
    plan = Recipes({"best": cfg, "baseline": cfg}, 3, {"best": {}, "baseline": {}}, {}, [member])
    with pytest.raises(BoneAgeError, match="trial 3 recorded no val prediction"):
        bias_corrections(plan, np.arange(5.0))
    plan.members[0].val_pred_months = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert bias_corrections(plan, np.arange(5.0) * 2)["best"].slope == pytest.approx(2.0)


def test_no_search_figure_is_wider_than_the_page_whatever_the_number_of_parameters():
    """Optuna's slice plot asks for 300 px per parameter: with the demo's five it overflowed the
    report page sideways. Every figure takes the page's width instead."""
    from search.reporting.figures import search_figures

    s = optuna.create_study()
    names = ["lr", "batch_size", "aug_strength", "weight_decay", "dropout"]
    s.optimize(lambda t: sum(t.suggest_float(n, 0.1, 1.0) for n in names), n_trials=6)
    figs = search_figures(s, None)
    assert "slice" in figs and all(f.layout.width is None for f in figs.values()), {
        k: f.layout.width for k, f in figs.items()
    }
