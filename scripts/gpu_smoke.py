"""The GPU path in one short run, for a machine with a CUDA device (under 10 minutes on one H200).

Checks what the CPU test suite cannot: the quick bench and the GPU throughput bench on CUDA; a fit
interrupted after one epoch and resumed from its checkpoint (the generator state must load on the
CPU); an out-of-memory trial whose memory is released before the next trial; worker processes
mapped to the parent's CUDA_VISIBLE_DEVICES; bf16 against fp32 MAE on one seed; images streamed from
pinned host memory against images on the GPU. Every check writes
its figures to results/gpu-smoke/smoke.json (after each check, so a crash keeps the earlier ones) and
a summary to results/gpu-smoke/smoke.md.

    python scripts/gpu_smoke.py            # everything
    python scripts/gpu_smoke.py --skip-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from boneage_core.config import DataSettings, TrainConfig  # noqa: E402
from boneage_core.dataset import SplitsBySize, prepare  # noqa: E402
from boneage_core.train import fit  # noqa: E402

OUT = REPO / "results" / "gpu-smoke"


def bench(quick: bool) -> dict:
    args = (
        ["--quick", "--out", str(OUT / "bench-quick")]
        if quick
        else ["--only", "gpu_throughput", "--out", str(OUT / "bench-gpu")]
    )
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "search", "bench", "--device", "cuda", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    report = OUT / ("bench-quick" if quick else "bench-gpu") / "bench.json"
    sections = json.loads(report.read_text())["sections"] if report.is_file() else {}
    return {
        "exit": r.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "measured": {k: v["measured"] for k, v in sections.items()},
        "stderr_tail": r.stderr[-1500:] if r.returncode else "",
    }


def data(px: int = 128):
    p = prepare(DataSettings(phantom_n=600), px, splits=("train", "val"))
    return p.split("train"), p.split("val")


def resume_after_interrupt(tmp: Path) -> dict:
    train, val = data()
    cfg = TrainConfig(image_size=128, epochs=2, batch_size=32, device="cuda")
    ckpt = tmp / "smoke.pt"
    ckpt.unlink(missing_ok=True)

    def stop_after_first(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    try:
        fit(cfg, train, val, on_epoch_end=stop_after_first, checkpoint=ckpt)
    except KeyboardInterrupt:
        pass
    resumed = fit(cfg, train, val, checkpoint=ckpt)
    straight = fit(cfg, train, val)
    return {
        "resumed_history_epochs": len(resumed.history),
        "resumed_val_mae": round(resumed.metrics["mae_months"], 3),
        "straight_val_mae": round(straight.metrics["mae_months"], 3),
        "note": "cudnn.benchmark picks kernels per run, so the two may differ slightly on a GPU",
    }


def oom_releases_memory() -> dict:
    """A trial that runs out of memory, through the search's own objective; allocated memory after it
    must be back where it was before it."""
    import optuna

    import boneage_core.train as train_mod
    from search.config.specs import load_spec
    from search.engine.objective import TRIAL_FAILURES, make_objective

    spec = load_spec("demo", ["data.image_size=128", "train.epochs=1", "train.device=cuda"])
    study_data = SplitsBySize(spec.data, quiet=True)
    study_data.split(128, "train"), study_data.split(128, "val")
    real = train_mod.train_one_epoch

    def greedy(*args, **kwargs):
        free, _ = torch.cuda.mem_get_info()
        hog = torch.empty(int(free * 0.9), dtype=torch.uint8, device="cuda")  # noqa: F841  (held by the frame)
        return real(*args, **kwargs) + float(torch.empty(int(free), dtype=torch.uint8, device="cuda").numel())

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    train_mod.train_one_epoch = greedy
    try:
        study = optuna.create_study()
        study.optimize(make_objective(spec, study_data), n_trials=1, catch=TRIAL_FAILURES)
    finally:
        train_mod.train_one_epoch = real
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    return {
        "state": study.trials[0].state.name,
        "fail_reason": study.trials[0].user_attrs.get("fail_reason", "")[:200],
        "allocated_before_mb": round(before / 2**20, 1),
        "allocated_after_mb": round(after / 2**20, 1),
        "released": after <= before + 1 * 2**20,
    }


def worker_mapping() -> dict:
    from search.engine.workers import worker_devices

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    out = {"device_count": count, "CUDA_VISIBLE_DEVICES": visible, "plan": worker_devices(2, visible, count)}
    if count < 2:
        out["note"] = (
            "one device visible: two workers share it (nothing to map); run on a 2-GPU machine to see the mapping"
        )
        return out
    seen = []
    for dev in out["plan"]:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=dev)
        code = "import torch; p = torch.cuda.get_device_properties(0); print(p.name, p.uuid)"
        seen.append(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()
        )
    out["each_worker_sees"] = seen
    out["distinct"] = len(set(seen)) == len(seen)
    return out


def _timed_fits(variants: dict[str, dict]) -> dict:
    """One seed of the same 128 px fit per variant of TrainConfig fields: val MAE and seconds each."""
    train, val = data()
    out = {}
    for name, fields in variants.items():
        cfg = TrainConfig(image_size=128, batch_size=32, device="cuda", **fields)
        start = time.perf_counter()
        r = fit(cfg, train, val)
        out[name] = {"val_mae": round(r.metrics["mae_months"], 3), "seconds": round(time.perf_counter() - start, 1)}
    return out


def bf16_vs_fp32() -> dict:
    tuned = {"epochs": 3, "schedule": "cosine", "use_sex": True}
    return _timed_fits({"fp32": {**tuned, "precision": "fp32"}, "bf16": {**tuned, "precision": "bf16"}})


def host_streaming() -> dict:
    """The same fit with the images on the GPU and streamed from pinned host memory (double-buffered):
    the same batches, so nearly the same MAE; the time says what streaming costs."""
    return _timed_fits({p: {"epochs": 2, "data_placement": p} for p in ("device", "host")})


CHECKS = {
    "bench_quick": lambda tmp: bench(quick=True),
    "bench_gpu_throughput": lambda tmp: bench(quick=False),
    "resume_after_interrupt": resume_after_interrupt,
    "oom_releases_memory": lambda tmp: oom_releases_memory(),
    "worker_mapping": lambda tmp: worker_mapping(),
    "bf16_vs_fp32": lambda tmp: bf16_vs_fp32(),
    "host_streaming": lambda tmp: host_streaming(),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bench", action="store_true", help="leave out the two bench runs (about 4 minutes)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible: this script checks the GPU path", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "checks": {}}
    for name, check in CHECKS.items():
        if args.skip_bench and name.startswith("bench"):
            continue
        start = time.perf_counter()
        try:
            result = {"ok": True, **check(OUT)}
        except Exception as exc:
            result = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:500],
                "trace": traceback.format_exc()[-2000:],
            }
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["checks"][name] = result
        print(f"{name}: {json.dumps(result)[:300]}", flush=True)
        (OUT / "smoke.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU smoke: {report['device']}, torch {report['torch']}", ""]
    lines += [
        f"- **{n}**: {json.dumps({k: v for k, v in r.items() if k != 'trace'})}" for n, r in report["checks"].items()
    ]
    (OUT / "smoke.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["ok"] for r in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
