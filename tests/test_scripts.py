"""The prepared scripts that run where the suite cannot: the GPU demo, dry-run here on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO, TINY_STUDY, run_main


def test_gpu_demo_runs_search_baseline_top_k_retrain_and_report_into_results_gpu_demo(
    tmp_path, phantom_src, monkeypatch, capsys
):
    """scripts/gpu_demo.py as a GPU machine would run it, with a tiny studies/gpu-demo.toml in the
    directory it runs from taking the packaged one's place: every step ends 0 and the report lands
    in results/gpu-demo/ beside the run's record. Each `python -m search` it starts runs in this
    process (the same main()), saving four starts of Python and torch."""
    spec = importlib.util.spec_from_file_location("gpu_demo", REPO / "scripts" / "gpu_demo.py")
    gpu_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_demo)
    started, real_run = [], gpu_demo.subprocess.run

    def run_here(command, **kwargs):
        if command[0] != sys.executable:  # nvidia-smi, for the record's device
            return real_run(command, **kwargs)
        assert command[:3] == [sys.executable, "-m", "search"] and str(REPO) in kwargs["env"]["PYTHONPATH"]
        started.append(command[3])
        return run_main(*command[3:], cwd=tmp_path, capsys=capsys)

    monkeypatch.setattr(gpu_demo.subprocess, "run", run_here, raising=True)
    (tmp_path / "studies").mkdir()
    tiny = TINY_STUDY.format(source=phantom_src).replace("epochs = 2", "epochs = 1")  # the baseline's too
    (tmp_path / "studies" / "gpu-demo.toml").write_text(tiny)
    monkeypatch.chdir(tmp_path)
    assert gpu_demo.main(["--trials", "2", "--search-s", "600"]) == 0
    out = tmp_path / "results" / "gpu-demo"
    record = json.loads((out / "gpu-demo-run.json").read_text())
    assert started == ["run", "baseline", "retrain", "report"]
    assert [s["command"].split()[3] for s in record["steps"]] == started
    assert all(s["exit"] == 0 for s in record["steps"]) and record["device"]
    retrained = json.loads((out / "retrain.json").read_text())
    assert retrained["top_k"] == 2 and "ensemble" in retrained["recipes"] and retrained["seeds"] == 2
    assert (out / "index.html").is_file() and "Final test" in (out / "summary.md").read_text()
