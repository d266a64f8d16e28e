"""How far can the embedded default be learned? Its ceiling against its label-noise floor.

Trains the baseline (exactly as studies define it, from scratch: no ImageNet weights offline) and a
strong recipe (sex input, Huber loss, AdamW, cosine schedule, 30 epochs) with fit() on the phantom, at
48, 96 and 128 px, with 600 hands (the old demo's: 420 train, 90 val) and with 2000 (1400 train, 300
val), one seed each; val MAE in months after every epoch, against the noise floor (MAE 4.79: no model
can do better on these labels) and the mean predictor. Each row is appended to <out>/rows.jsonl as it
finishes, with the phantom version and the commit it was measured at; a rerun skips the rows already
measured on that phantom version, so the measurement can run in pieces. --phantom-commit measures the
phantom as an earlier commit drew it, so the "before" of a phantom change is measured by the same
script as the "after". <out>/learnability.json and <out>/learnability.md (a table per phantom version)
are rewritten after every row.

    python scripts/learnability.py                          # every row (about 90 minutes on 2 CPU cores)
    python scripts/learnability.py --rows 0 1               # rows 0 and 1 only
    python scripts/learnability.py --phantom-commit fa78435 --rows 6 7   # phantom version 1, 2000 hands"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boneage_core.phantom  # noqa: E402
from boneage_core.cache import default_cache_dir  # noqa: E402
from boneage_core.config import BASELINE, DataSettings, TrainConfig  # noqa: E402
from boneage_core.dataset import prepare  # noqa: E402
from boneage_core.phantom import NOISE_FLOOR_MAE_MONTHS  # noqa: E402
from boneage_core.train import fit  # noqa: E402
from search.storage.provenance import git_commit

SMALL_N, LARGE_N = 600, 2000  # phantom images: 420 and 1400 of them train (the first is the old demo's)
BAR_X_NOISE_FLOOR = 1.6  # a miniature where recipes matter gets this close to its noise floor
BASELINE_FIELDS = {k: v for k, v in dataclasses.asdict(BASELINE).items() if k not in ("image_size", "device")}
BASELINE_FIELDS["pretrained"] = "none"
STRONG = {
    **BASELINE_FIELDS,
    "use_sex": True,
    "loss": "huber",
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "aug_strength": 0.3,
    "epochs": 30,
}
# (image px, recipe, phantom images); rows 0-5 were the first measurement, 6-8 ask what more images buy
ROWS = [
    (48, "seed", SMALL_N),
    (48, "strong", SMALL_N),
    (96, "seed", SMALL_N),
    (96, "strong", SMALL_N),
    (128, "seed", SMALL_N),
    (128, "strong", SMALL_N),
    (48, "seed", LARGE_N),
    (48, "strong", LARGE_N),
    (96, "strong", LARGE_N),
]
RECIPES = {"seed": BASELINE_FIELDS, "strong": STRONG}  # "seed": the baseline, as results/learnability names it


def phantom_at(commit: str | None) -> ModuleType:
    """The phantom's code: this checkout's, or boneage_core/phantom.py as it was at a git commit, to
    measure an earlier version of the embedded default beside the current one."""
    if commit is None:
        return boneage_core.phantom
    source = subprocess.run(
        ["git", "show", f"{commit}:boneage_core/phantom.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"phantom_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # the phantom writer's worker processes find its functions by name
    spec.loader.exec_module(module)
    return module


def load_phantom(module: ModuleType, n: int, px: int, commit: str | None):
    """Train and val of n phantom hands at px: the current version through the study's own data path,
    an earlier one written once into the cache under its version and commit, then read back alike."""
    if commit is None:
        return prepare(DataSettings(phantom_n=n), px, splits=("train", "val"))
    root = default_cache_dir() / f"phantom-v{version_of(module)}-{commit}-n{n}-s0"
    if not (root / module.TRAIN_CSV).is_file():
        module.write_phantom(root, n, 0)
    return prepare(DataSettings(source=str(root)), px, splits=("train", "val"))


def version_of(module: ModuleType) -> int:
    return getattr(module, "PHANTOM_VERSION", 1)  # the phantom had no version number before version 2


def run_row(i: int, module: ModuleType, commit: str | None) -> dict:
    px, name, n = ROWS[i]
    data = load_phantom(module, n, px, commit)
    train, val = data.split("train"), data.split("val")
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    result = fit(TrainConfig(image_size=px, device="cpu", **RECIPES[name]), train, val)
    mean_predictor = float(np.abs(val.age_months - train.age_months.mean()).mean())
    best = min(h["val_mae_months"] for h in result.history)
    return {
        "row": i,
        "phantom": version_of(module),
        "phantom_commit": commit,
        "phantom_images": n,
        "px": px,
        "recipe": name,
        "train_images": len(train),
        "val_images": len(val),
        "epochs": RECIPES[name]["epochs"],
        "val_mae_per_epoch": [round(h["val_mae_months"], 2) for h in result.history],
        "val_mae_months": round(result.metrics["mae_months"], 2),
        "best_epoch_val_mae_months": round(best, 2),
        "x_noise_floor": round(result.metrics["mae_months"] / NOISE_FLOOR_MAE_MONTHS, 2),
        "mean_predictor_val_mae_months": round(mean_predictor, 2),
        "x_mean_predictor": round(result.metrics["mae_months"] / mean_predictor, 2),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def version(row: dict) -> int:
    return row.get("phantom", 1)  # rows measured before the phantom had versions are version 1's


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| row | hands (train) | px | recipe | epochs | val MAE (months) | x noise floor | x mean predictor "
        "| best epoch | wall | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["row"]):
        commit = (r.get("phantom_commit") or r.get("commit") or "before 01189e0").removesuffix(" (local changes)")
        commit = commit[:7] if " " not in commit else commit  # a hash, shortened
        lines.append(
            f"| {r['row']} | {r.get('phantom_images', SMALL_N)} ({r['train_images']}) | {r['px']} | {r['recipe']} | "
            f"{r['epochs']} | {r['val_mae_months']:.2f} | {r['x_noise_floor']:.2f} | {r['x_mean_predictor']:.2f} | "
            f"{r['best_epoch_val_mae_months']:.2f} | {r['wall_s'] / 60:.0f} min | {commit} |"
        )
    return lines


def markdown(report: dict) -> str:
    bar = BAR_X_NOISE_FLOOR * NOISE_FLOOR_MAE_MONTHS
    current = version_of(boneage_core.phantom)
    lines = [
        "# How far the embedded default can be learned",
        "",
        f"`{report['command']}` ({report['dates']}), {report['machine']}. One seed per row; 70% of the hands train, "
        f"15% validate. Noise floor: val MAE {NOISE_FLOOR_MAE_MONTHS:.2f} months (the labels' rater noise); the bar "
        f"for a learnable miniature is {BAR_X_NOISE_FLOOR}x that, {bar:.2f} months. The commit column is the "
        "phantom's code a row was measured with (the row's own commit, or the one `--phantom-commit` named). "
        "Wall times include writing and decoding a phantom not yet in the cache, and some rows shared the cores "
        "with other work: they are not benchmarks.",
    ]
    for v in sorted({version(r) for r in report["rows"]}):
        rows = [r for r in report["rows"] if version(r) == v]
        lines += ["", f"## Phantom version {v}{' (the current one)' if v == current else ''}", "", *table(rows), ""]
        for n in sorted({r.get("phantom_images", SMALL_N) for r in rows}):
            best = min((r for r in rows if r.get("phantom_images", SMALL_N) == n), key=lambda r: r["val_mae_months"])
            verdict = "below" if best["val_mae_months"] <= bar else "above"
            lines.append(
                f"- {n} hands: best {best['val_mae_months']:.2f} months ({best['px']} px, {best['recipe']} recipe), "
                f"{best['x_noise_floor']:.2f}x the noise floor, {verdict} the bar."
            )
    done = {r["row"] for r in report["rows"] if version(r) == current}
    missing = [str(i) for i in range(len(ROWS)) if i not in done]
    if missing:
        rows, them = (f"row {missing[0]}", "it") if len(missing) == 1 else (f"rows {', '.join(missing)}", "them")
        lines += ["", f"Not yet measured on version {current}: {rows} (`--rows {' '.join(missing)}` adds {them})."]
    seed = ", ".join(f"{k} {v}" for k, v in BASELINE_FIELDS.items())
    strong = ", ".join(f"{k} {v}" for k, v in STRONG.items() if BASELINE_FIELDS.get(k) != v)
    return "\n".join([*lines, "", f"Baseline: {seed}.", "", f"Strong recipe: the baseline with {strong}.", ""])


def invocations(rows: list[dict]) -> str:
    """Every invocation that measured a row, in order: a rerun adds rows, it does not redo them."""
    return "; ".join(dict.fromkeys(r["command"] for r in rows))


def write_report(out: Path, rows: list[dict]) -> None:
    """learnability.json (every row, the recipes, the machine) and learnability.md, from the rows."""
    report = {
        "command": invocations(rows),
        "dates": ", ".join(sorted({r["date"] for r in rows if r.get("date")})),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "noise_floor_mae_months": NOISE_FLOOR_MAE_MONTHS,
        "bar_mae_months": BAR_X_NOISE_FLOOR * NOISE_FLOOR_MAE_MONTHS,
        "phantom_version": version_of(boneage_core.phantom),
        "seed_recipe": BASELINE_FIELDS,  # the key the committed results were written with
        "strong_recipe": STRONG,
        "rows": rows,
    }
    (out / "learnability.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "learnability.md").write_text(markdown(report))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", help="row numbers (default: all; none: rewrite the report)")
    parser.add_argument("--out", default="results/learnability", help="output directory (default results/learnability)")
    parser.add_argument(
        "--phantom-commit", help="measure the phantom as it was at this git commit (default: this checkout's)"
    )
    args = parser.parse_args(argv)
    module = phantom_at(args.phantom_commit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    for i in args.rows if args.rows is not None else range(len(ROWS)):
        if any(r["row"] == i and version(r) == version_of(module) for r in rows):
            continue
        command = shlex.join(["python", "scripts/learnability.py", *argv])
        stamp = {"date": datetime.date.today().isoformat(), "command": command, "commit": git_commit(Path.cwd())}
        rows.append({**run_row(i, module, args.phantom_commit), **stamp})
        print(json.dumps(rows[-1]), flush=True)
        with open(rows_file, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        write_report(out, rows)
    write_report(out, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
