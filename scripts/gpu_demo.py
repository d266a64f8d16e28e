"""The GPU study (search/config/studies/gpu-demo.toml) in about ten minutes on one GPU: search, baseline, final test.

Runs the commands a user would, each as its own process in the current directory, and times them:

    python -m search run      --study gpu-demo --trials 40 --timeout 270
    python -m search baseline --study gpu-demo --seeds 2
    python -m search retrain  --study gpu-demo --seeds 2 --top-k 2
    python -m search report   --study gpu-demo

The first command writes the 13,000-hand phantom and decodes it into the cache once. The report lands
in results/gpu-demo/ (index.html, summary.md and .json, figures), beside gpu-demo-run.json: each step's
command, exit status and wall time, the device and the versions. A step that fails stops the run with
its exit status; rerunning resumes the study (finished trials and retrain's checkpoints are kept).

    python scripts/gpu_demo.py                     # on a GPU machine
    python scripts/gpu_demo.py --search-s 120      # a shorter search

A dry run on a CPU: a small studies/gpu-demo.toml in the directory you run from takes the packaged
one's place (as for every study), for example 40 hands at 32 px with --trials 3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

STUDY = "gpu-demo"


def steps(trials: int, search_s: int) -> list[list[str]]:
    return [
        ["run", "--study", STUDY, "--trials", str(trials), "--timeout", str(search_s)],
        ["baseline", "--study", STUDY, "--seeds", "2"],
        ["retrain", "--study", STUDY, "--seeds", "2", "--top-k", "2"],
        ["report", "--study", STUDY],
    ]


def device() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or "no GPU (nvidia-smi printed nothing)"
    except (OSError, subprocess.SubprocessError):
        return "no GPU (no nvidia-smi)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-s", type=int, default=270, help="seconds of search before the final test (270)")
    parser.add_argument("--trials", type=int, default=40, help="at most this many trials (40)")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    record = {
        "command": shlex.join(["python", "scripts/gpu_demo.py", *argv]),
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device(),
        "python": platform.python_version(),
        "steps": [],
    }
    out = Path("results") / STUDY
    rc = 0
    for step in steps(args.trials, args.search_s):
        command = [sys.executable, "-m", "search", *step]
        print(f"$ python -m search {shlex.join(step)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(command, env=env).returncode
        record["steps"].append(
            {
                "command": shlex.join(["python", "-m", "search", *step]),
                "exit": rc,
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
        if rc != 0:
            print(f"stopped: exit {rc}; rerun to resume", file=sys.stderr)
            break
    record["total_wall_s"] = round(sum(s["wall_s"] for s in record["steps"]), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-demo-run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['total_wall_s']:.0f} s in all; results/{STUDY}/index.html, results/{STUDY}/gpu-demo-run.json")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
