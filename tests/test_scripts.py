"""The prepared scripts that run where the suite cannot: the GPU demo, dry-run here on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, TINY_STUDY


def test_gpu_demo_runs_search_seed_recipe_top_k_retrain_and_report_into_results_gpu_demo(tmp_path, phantom_src):
    """scripts/gpu_demo.py as a GPU machine would run it, with a tiny studies/gpu-demo.toml in the
    directory it runs from taking the packaged one's place: every step ends 0 and the report lands
    in results/gpu-demo/ beside the run's record."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "gpu-demo.toml").write_text(TINY_STUDY.format(source=phantom_src))
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_demo.py"), "--trials", "2", "--search-s", "600"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "results" / "gpu-demo"
    record = json.loads((out / "gpu-demo-run.json").read_text())
    assert [s["command"].split()[3] for s in record["steps"]] == ["run", "baseline", "retrain", "report"]
    assert all(s["exit"] == 0 for s in record["steps"]) and record["device"]
    retrained = json.loads((out / "retrain.json").read_text())
    assert retrained["top_k"] == 2 and "ensemble" in retrained["recipes"] and retrained["seeds"] == 2
    assert (out / "index.html").is_file() and "Final test" in (out / "summary.md").read_text()
