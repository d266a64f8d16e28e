"""How far can the embedded default be learned? Its ceiling against its label-noise floor.

Trains the seed recipe (exactly as studies define it, from scratch: no ImageNet weights offline) and a
strong recipe (sex input, Huber loss, AdamW, cosine schedule, 30 epochs) with fit() on the demo's
phantom (600 hands: 420 train, 90 val), all images, at 48, 96 and 128 px, one seed each; val MAE in
months after every epoch, against the noise floor (MAE 4.79: no model can do better on these labels)
and the mean predictor. Rows run cheapest first, each appended to <out>/rows.jsonl as it finishes; a
rerun skips the rows already there, so the measurement can run in pieces. <out>/learnability.json and
<out>/learnability.md (the table) are rewritten after every row.

    python scripts/learnability.py                 # every row (about an hour on 2 CPU cores)
    python scripts/learnability.py --rows 0 1      # rows 0 and 1 only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boneage_core.config import SEED_RECIPE, TrainConfig  # noqa: E402
from boneage_core.dataset import DataSettings, prepare  # noqa: E402
from boneage_core.phantom import NOISE_FLOOR_MAE_MONTHS  # noqa: E402
from boneage_core.train import fit  # noqa: E402
from search.record import git_commit  # noqa: E402

PHANTOM_N = 600  # the demo study's phantom
SEED = {k: v for k, v in dataclasses.asdict(SEED_RECIPE).items() if k not in ("image_size", "device")}
SEED["pretrained"] = "none"
STRONG = {
    **SEED,
    "use_sex": True,
    "loss": "huber",
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "aug_strength": 0.3,
    "epochs": 30,
}
ROWS = [(48, "seed"), (48, "strong"), (96, "seed"), (96, "strong"), (128, "seed"), (128, "strong")]
RECIPES = {"seed": SEED, "strong": STRONG}


def run_row(i: int) -> dict:
    px, name = ROWS[i]
    data = prepare(DataSettings(phantom_n=PHANTOM_N), px, splits=("train", "val"))
    train, val = data.split("train"), data.split("val")
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    result = fit(TrainConfig(image_size=px, device="cpu", **RECIPES[name]), train, val)
    mean_predictor = float(np.abs(val.age_months - train.age_months.mean()).mean())
    best = min(h["val_mae_months"] for h in result.history)
    return {
        "row": i,
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


def markdown(report: dict) -> str:
    lines = [
        "# How far the embedded default can be learned",
        "",
        f"`{report['command']}` ({report['dates']}), {report['machine']}. One seed per row. Noise floor: val "
        f"MAE {NOISE_FLOOR_MAE_MONTHS:.2f} months (the labels' rater noise); the issue's bar for a learnable "
        f"miniature is 1.6x that, {1.6 * NOISE_FLOOR_MAE_MONTHS:.2f} months.",
        "",
        "| row | px | recipe | epochs | val MAE (months) | x noise floor | x mean predictor | best epoch | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: r["row"]):
        lines.append(
            f"| {r['row']} | {r['px']} | {r['recipe']} | {r['epochs']} | {r['val_mae_months']:.2f} | "
            f"{r['x_noise_floor']:.2f} | {r['x_mean_predictor']:.2f} | {r['best_epoch_val_mae_months']:.2f} | "
            f"{r['wall_s'] / 60:.0f} min |"
        )
    missing = [f"{px} px {name}" for i, (px, name) in enumerate(ROWS) if i not in {r["row"] for r in report["rows"]}]
    if missing:
        lines += ["", f"Not yet measured: {', '.join(missing)} (rerun the command to add them)."]
    seed = ", ".join(f"{k} {v}" for k, v in SEED.items())
    strong = ", ".join(f"{k} {v}" for k, v in STRONG.items() if SEED.get(k) != v)
    return "\n".join([*lines, "", f"Seed recipe: {seed}.", "", f"Strong recipe: the seed recipe with {strong}.", ""])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", help="row numbers (default: all)")
    parser.add_argument("--out", default="results/learnability", help="output directory (default results/learnability)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    dates = {r.get("date") for r in rows}
    report_file = out / "learnability.json"
    earlier = json.loads(report_file.read_text())["command"] if report_file.is_file() else None  # rows without one
    for i in args.rows if args.rows is not None else range(len(ROWS)):
        if any(r["row"] == i for r in rows):
            continue
        command = shlex.join(["python", "scripts/learnability.py", *argv])
        stamp = {"date": datetime.date.today().isoformat(), "command": command, "commit": git_commit(Path.cwd())}
        rows.append({**run_row(i), **stamp})
        dates.add(rows[-1]["date"])
        print(json.dumps(rows[-1]), flush=True)
        with open(rows_file, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        report = {
            # every invocation that measured a row, in order: a rerun adds rows, it does not redo them
            "command": "; ".join(dict.fromkeys(r.get("command", earlier) for r in rows)),
            "dates": ", ".join(sorted(d for d in dates if d)),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}",
            "noise_floor_mae_months": NOISE_FLOOR_MAE_MONTHS,
            "seed_recipe": SEED,
            "strong_recipe": STRONG,
            "rows": rows,
        }
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        (out / "learnability.md").write_text(markdown(report))


if __name__ == "__main__":
    main(sys.argv[1:])
