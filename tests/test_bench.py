"""python -m search bench: the quick mode's report structure (never its timings), the GPU path on the
CPU, and bad input as one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from boneage_core.train import training_batches
from search.bench import SECTIONS, gpu_throughput, render_markdown
from search.bench_storage import scratch_postgres
from tests.conftest import assert_one_line_error, run_cli


def test_quick_bench_writes_every_benchmark_with_target_and_figures(tmp_path):
    # the server trusts local connections, so a password in the URL is accepted and must never be written
    secret = "postgresql://postgres:hunter2@127.0.0.1:5432/test"
    r = run_cli("bench", "--quick", "--out", str(tmp_path / "out"), "--postgres", secret, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert not any("hunter2" in p.read_text() for p in (tmp_path / "out").iterdir())
    assert "hunter2" not in r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["mode"] == "quick" and list(report["sections"]) == list(SECTIONS)
    assert {"cpu", "cores", "torch", "optuna", "pillow"} <= set(report["machine"])
    for name, s in report["sections"].items():
        assert s["target"] and s["measured"] and s["seconds"] >= 0, name
        assert s["met"] in (True, False, None), name
        if not s["skipped"]:
            assert s["figures"] and s["notes"], name

    d = report["sections"]["data_path"]["figures"]
    assert d["images"] == 4 and d["source_hw_px"] == [2044, 1514]
    assert d["seed_images_per_s"] > 0 and d["ours_images_per_s"] > 0 and d["cache_build_s"] > 0
    assert d["ratio_vs_seed"] == pytest.approx(d["ours_images_per_s"] / d["seed_images_per_s"], rel=0.01)

    o = report["sections"]["training_overhead"]["figures"]
    assert o["ratio"] > 0 and all(p["fit_epoch_s"] > 0 and p["bare_epoch_s"] > 0 for p in o["pairs"])

    se = report["sections"]["search_efficiency"]["figures"]
    pruned, unpruned, random = se["tpe_pruned"], se["tpe_unpruned"], se["random_equal_epochs"]
    assert pruned["trials"] == unpruned["trials"] == 3 and unpruned["pruned"] == 0
    assert unpruned["epochs"] == 3 * unpruned["epochs_per_trial"]  # no pruner: every trial trains in full
    assert random["trials"] == max(1, round(pruned["epochs"] / pruned["epochs_per_trial"]))
    assert se["epochs_saved"] == pytest.approx(1 - pruned["epochs"] / unpruned["epochs"], abs=1e-3)

    st = report["sections"]["storage"]["figures"]
    assert st["runs"]["sqlite_trivial_1w"]["trials"] == 20  # one worker: exactly the budget
    assert all(v > 0 for v in st["ms_per_trial_trivial"].values())
    assert "sqlite" in st["cpu_bound_speedup_2w"]

    gpu = report["sections"]["gpu_throughput"]
    assert gpu["skipped"] and gpu["met"] is None  # the suite hides every GPU (conftest)

    md = (tmp_path / "out" / "bench.md").read_text()
    assert md == render_markdown(report)
    for s in report["sections"].values():
        assert s["target"] in md and s["title"] in md
    assert "Machine:" in md and report["machine"]["torch"] in md


def test_gpu_throughput_code_path_runs_on_the_cpu():
    """The GPU benchmark's code (resident uint8 images, augmentation, the fit step) at toy size."""
    rows = gpu_throughput(torch.device("cpu"), sizes=(32,), n_images=40, batch={32: 16}, warmup_batches=1)
    assert len(rows) == 1 and rows[0]["image_px"] == 32 and rows[0]["images_per_s"] > 0


def test_training_batches_cover_the_epoch_in_full_batches():
    images = torch.randint(0, 256, (50, 32, 32), dtype=torch.uint8)
    male = torch.zeros(50, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    batches = list(training_batches(images, male, 16, 0.5, g, torch.device("cpu")))
    assert [x.shape for _, x in batches] == [(16, 1, 32, 32)] * 3  # the last 2 images wait for the next epoch
    seen = torch.cat([idx for idx, _ in batches])
    assert len(set(seen.tolist())) == 48
    assert sum(x.shape[0] for _, x in training_batches(images, male, 16, 0, g, torch.device("cpu"), False)) == 50


def test_scratch_postgres_is_none_when_no_server_answers():
    with scratch_postgres("postgresql://postgres@127.0.0.1:1/test") as url:
        assert url is None


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--only", "data_path,speed"], ["--only", "speed", "data_path"]),
        (["--out", "{file}"], ["cannot create the output directory"]),
    ],
)
def test_bench_bad_input_is_one_line(tmp_path, args, fragments):
    (tmp_path / "afile").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "afile" / "out")) for a in args]
    assert_one_line_error(run_cli("bench", "--quick", *args, cwd=tmp_path), *fragments)


def test_bench_on_cuda_without_a_gpu_is_one_line(tmp_path):  # the suite hides every GPU (conftest)
    assert_one_line_error(run_cli("bench", "--quick", "--device", "cuda", cwd=tmp_path), "cuda")
