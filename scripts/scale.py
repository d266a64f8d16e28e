"""The data path at full RSNA scale: 12,611 + 1,425 + 200 images of 2044x1514 px, official layout.

    python scripts/scale.py make DIR          # write the full-scale phantom once, outside the repo
                                               # (about 36 GB and 25 minutes on 2 cores; resumable)
    python scripts/scale.py measure DIR       # data check, cache builds at 384 and 512 px, what one
                                               # and two training workers hold in RAM, one 384 px step

`measure` writes results/scale/scale.json (every figure, the command, the machine) and
results/scale/scale.md (the table the README quotes). Each measurement runs in a fresh process, so
peak RSS is that step's own; the cache goes to a scratch folder under DIR and is removed after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.bench.original_pipeline import RSNA_HW, write_fullsize  # noqa: E402

# the sizes of the official RSNA release; ids as there: training 1377.., validation and test apart
SPLIT_SIZES = {"train": 12611, "val": 1425, "test": 200}
FIRST_ID = {"train": 1377, "val": 20000, "test": 30000}
SIXTEEN_BIT_EVERY = 4  # one image in four is 16-bit with 12 bits used, the rest 8-bit
SPLIT_SIZES_TOTAL = sum(SPLIT_SIZES.values())
DONE_MARK = "scale-phantom-complete"


def _image_path(root: Path, split: str, i: int) -> Path:
    case = FIRST_ID[split] + i
    if split == "train":
        return root / "boneage-training-dataset" / f"{case}.png"
    if split == "val":
        half = "boneage-validation-dataset-1" if i % 2 == 0 else "boneage-validation-dataset-2"
        return root / "Bone Age Validation Set" / half / f"{case}.png"
    return root / "Bone Age Test Set" / "Test Set Images" / f"{case}.png"


def _write(job: tuple[Path, str, int, int]) -> dict:
    root, split, i, index = job
    path = _image_path(root, split, i)
    row = {"split": split, "id": FIRST_ID[split] + i}
    if path.is_file() and path.stat().st_size > 0:  # resumed: the image was written before
        from boneage_core.phantom import generate_image

        _, age, male, _ = generate_image(0, index)
        return {**row, "age_months": age, "male": male}
    tmp = path.with_name(path.stem + ".part.png")  # never a half-written file under an image's name
    made = write_fullsize(tmp, 0, index, sixteen_bit=index % SIXTEEN_BIT_EVERY == 1, compress_level=1)
    os.replace(tmp, path)
    return {**row, "age_months": made["age_months"], "male": made["male"]}


def make(root: Path, workers: int) -> None:
    jobs, index = [], 0
    for split, n in SPLIT_SIZES.items():
        for i in range(n):
            jobs.append((root, split, i, index))
            index += 1
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(workers) as pool:
        for k, row in enumerate(pool.map(_write, jobs, chunksize=16), 1):
            rows.append(row)
            if k % 500 == 0:
                print(f"{k}/{len(jobs)} images, {time.perf_counter() - start:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    train = df[df["split"] == "train"]
    pd.DataFrame({"id": train["id"], "boneage": train["age_months"], "male": train["male"]}).to_csv(
        root / "boneage-training-dataset.csv", index=False
    )
    val = df[df["split"] == "val"]
    pd.DataFrame(
        {
            "Image ID": val["id"],
            "male": val["male"].map({True: "TRUE", False: "FALSE"}),
            "Bone Age (months)": val["age_months"],
        }
    ).to_csv(root / "Bone Age Validation Set" / "Validation Dataset.csv", index=False)
    test = df[df["split"] == "test"]
    pd.DataFrame(
        {
            "Case ID": test["id"],
            "Sex": np.where(test["male"], "M", "F"),
            "Ground truth bone age (months)": test["age_months"],
        }
    ).to_excel(root / "Bone Age Test Set" / "Bone age ground truth.xlsx", index=False)
    (root / DONE_MARK).write_text(f"{len(df)} images in {time.perf_counter() - start:.0f} s with {workers} workers\n")
    print(f"wrote {len(df)} images to {root} ({time.perf_counter() - start:.0f} s)")


def _run_step(argv: list[str], env: dict[str, str]) -> dict:
    """One command in a fresh process: wall seconds, its own peak RSS, exit code, last output line."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.replace("\r", "\n").splitlines() if line.strip()]
    return {
        "command": " ".join(shlex.quote(a) for a in argv[1:]),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "exit": proc.returncode,
        "last_line": lines[-1] if lines else "",
        "output": lines[-40:],
    }


def _memory(pid: int) -> dict[str, float]:
    """MB from /proc/PID/smaps_rollup: Rss (all pages it maps, shared ones too), Pss (shared pages split
    among the processes mapping them) and private (pages no other process shares)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) / 1024
    return {
        "rss_mb": round(fields["Rss"]),
        "pss_mb": round(fields["Pss"]),
        "private_mb": round(fields["Private_Clean"] + fields["Private_Dirty"]),
    }


def worker(root: str, size: int, ready: str, stop: str, copy: bool, step: bool) -> None:
    """One training worker as `run --workers K` starts it: its splits through SplitsBySize and onto the
    device through fit's own placement, every page of the training images read the way an epoch
    gathers its batches; with step, one timed training step (train_one_epoch, the code a GPU runs)."""
    import torch

    from boneage_core.config import BASELINE, DataSettings
    from boneage_core.dataset import Split, SplitsBySize
    from boneage_core.train import fit_tensors, new_training_state, train_one_epoch

    torch.set_num_threads(1 if not step else os.cpu_count() or 1)
    data = SplitsBySize(DataSettings(source=root, image_size=size), quiet=True)
    train, val = data.split(size, "train"), data.split(size, "val")
    if copy:  # how a split was held before: every worker's own copy of its rows
        train = Split(np.array(train.images), train.age_months, train.male, train.ids)
        val = Split(np.array(val.images), val.age_months, val.male, val.ids)
    cfg = dataclasses.replace(BASELINE, image_size=size, pretrained="none", device="cpu")
    device = torch.device("cpu")
    mean, std = float(np.mean(train.age_months)), float(np.std(train.age_months))
    placed = fit_tensors(train, val, device, "device", mean, std)
    order = torch.randperm(len(placed.train_images))
    for i in range(0, len(order), cfg.batch_size):  # the gathers of one epoch, without its compute
        placed.train_images[order[i : i + cfg.batch_size]].sum()
    result: dict = {"train_images": len(train), "val_images": len(val), "train_mb": round(train.images.nbytes / 2**20)}
    if step:
        state = new_training_state(cfg, len(train), device)
        n = 3 * cfg.batch_size  # three steps: the first pays for one-off allocations, the last two are timed
        first = placed.train_images[: cfg.batch_size]
        train_one_epoch(state, first, placed.train_targets[: cfg.batch_size], placed.train_male[: cfg.batch_size], cfg)
        t0 = time.perf_counter()
        train_one_epoch(
            state, placed.train_images[cfg.batch_size : n], placed.train_targets[cfg.batch_size : n],
            placed.train_male[cfg.batch_size : n], cfg,
        )  # fmt: skip
        result["step_s"] = round((time.perf_counter() - t0) / 2, 2)
        result["step_threads"] = torch.get_num_threads()
        result["batch_size"] = cfg.batch_size
    Path(ready).write_text(json.dumps(result))
    while not Path(stop).exists():
        time.sleep(0.2)


def _workers(root: Path, size: int, k: int, scratch: Path, env: dict, copy: bool = False, step: bool = False) -> dict:
    """K workers at once, measured from outside while all of them hold their data."""
    procs, readies = [], []
    tag = uuid.uuid4().hex[:8]  # every call its own files: a stale one would pass for a ready worker
    stop = scratch / f"stop-{tag}"
    for i in range(k):
        ready = scratch / f"ready-{tag}-{i}"
        args = (str(root), size, str(ready), str(stop), copy, step and i == 0)
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale; scale.worker{args!r}"
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env))
        readies.append(ready)
    while not all(r.exists() for r in readies):
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError("a worker failed")
        time.sleep(0.5)
    memory = [_memory(p.pid) for p in procs]
    stop.write_text("")
    for p in procs:
        p.wait()
    info = [json.loads(r.read_text()) for r in readies]
    return {"px": size, "workers": k, "copied": copy, "per_worker": memory, "worker": info}


PARTS = ("check", "cache", "workers", "step")


def measure(root: Path, out: Path, sizes: list[int], parts: tuple[str, ...] = PARTS) -> None:
    """Every part into out/scale.json; with only some parts, those are measured again and replace theirs
    in the existing file, which records the rerun's command and commit beside the first run's."""
    from search.bench.report import machine

    if not (root / DONE_MARK).is_file():
        raise SystemExit(f"{root} is not a complete full-scale phantom: run `python scripts/scale.py make {root}`")
    scratch = root.parent / "scale-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    env = {**os.environ, "BONEAGE_CACHE_DIR": str(scratch / "cache"), "PYTHONPATH": str(REPO)}
    py = [sys.executable, "-m", "search"]
    n_files = sum(1 for _ in root.rglob("*.png"))
    data_gb = sum(p.stat().st_size for p in root.rglob("*.png")) / 1e9
    report: dict = {
        "data": {"dir": str(root), "images": n_files, "png_gb": round(data_gb, 1), "source_hw_px": list(RSNA_HW)},
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "git_commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine(),
        "steps": {},
    }
    if parts != PARTS:
        first = json.loads((out / "scale.json").read_text())
        rerun = {k: report[k] for k in ("command", "git_commit")} | {"parts": list(parts)}
        report = first | {"reruns": [*first.get("reruns", []), rerun]}

    def save() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "scale.md").write_text(_markdown(report))

    def step(name: str, argv: list[str]) -> dict:
        print(f"{name}: {' '.join(argv[3:])}", flush=True)
        report["steps"][name] = r = _run_step(argv, env)
        print(f"  {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB, exit {r['exit']}: {r['last_line']}", flush=True)
        save()
        return r

    if "check" in parts:
        step("data check", [*py, "data", "check", str(root)])
    for size in sizes if "cache" in parts else ():
        r = step(f"cache build {size} px", [*py, "data", "cache", str(root), "--size", str(size)])
        caches = list((scratch / "cache").glob(f"images-*-{size}px.npy"))
        r["cache_gb"] = round(sum(c.stat().st_size for c in caches) / 1e9, 2)
        r["images_per_s"] = round(SPLIT_SIZES_TOTAL / r["wall_s"], 1)
        r["images_per_s_per_core"] = round(SPLIT_SIZES_TOTAL / r["wall_s"] / (os.cpu_count() or 1), 1)
        step(f"cache hit {size} px", [*py, "data", "cache", str(root), "--size", str(size)])
    if "workers" in parts:
        report["workers"] = []
    for size in sizes if "workers" in parts else ():
        for k, copy in ((1, False), (2, False), (2, True)):
            print(f"workers: {k} at {size} px{' (copies)' if copy else ''}", flush=True)
            report["workers"].append(_workers(root, size, k, scratch, env, copy=copy))
            save()
    if "step" in parts:
        print(f"one training step at {min(sizes)} px", flush=True)
        report["step"] = _workers(root, min(sizes), 1, scratch, env, step=True)
        save()
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out}/scale.json and scale.md")


def _markdown(report: dict) -> str:
    steps, d = report["steps"], report["data"]
    m = report["machine"]
    lines = [
        "# The data path at full RSNA scale",
        "",
        f"{d['images']} phantom radiographs of {d['source_hw_px'][0]}x{d['source_hw_px'][1]} px in the official "
        f"layout ({d['png_gb']} GB of PNG, one in four 16-bit), on {m.get('cpu', '?')} with {m.get('cores')} cores "
        f"and {m.get('memory_gib')} GiB. Command: `{report['command']}` at commit {report.get('git_commit')}. Each "
        "step is a fresh process; a cache build decodes with one thread per core. Peak RSS counts the pages of the "
        "memory-mapped cache it writes (file pages the kernel can drop), so it grows with the cache.",
        "",
        "| step | wall | peak RSS | figures |",
        "|---|---|---|---|",
    ]
    for name, r in steps.items():
        extra = []
        if "cache_gb" in r:
            extra = [
                f"{r['images_per_s']} images/s ({r['images_per_s_per_core']} per core)",
                f"cache {r['cache_gb']} GB",
            ]
        extra.append(f"exit {r['exit']}")
        lines.append(f"| {name} | {r['wall_s']} s | {r['peak_rss_mb']} MB | {'; '.join(extra)} |")
    if report.get("workers"):
        lines += [
            "",
            "What each training worker holds in RAM, measured from outside while all hold their data "
            "(Rss counts the shared cache pages in every process; Pss splits them among the processes; "
            "private is what no other process shares, so a lone worker's mapped cache counts as private):",
            "",
            "| px | workers | splits held as | training split | per worker: Rss / Pss / private |",
            "|---|---|---|---|---|",
        ]
        for w in report["workers"]:
            held = "copies (as before)" if w["copied"] else "the mapped cache files"
            per = ", ".join(f"{x['rss_mb']} / {x['pss_mb']} / {x['private_mb']} MB" for x in w["per_worker"])
            lines.append(f"| {w['px']} | {w['workers']} | {held} | {w['worker'][0]['train_mb']} MB | {per} |")
    if report.get("step"):
        w, s = report["step"], report["step"]["worker"][0]
        mem = w["per_worker"][0]
        lines += [
            "",
            f"One training step at {w['px']} px on the CPU (ResNet-50 from scratch, batch {s['batch_size']}, "
            f"{s['step_threads']} threads, through train_one_epoch: augmentation, forward, backward, Adam, as on a "
            f"GPU): {s['step_s']} s; that worker then held Rss {mem['rss_mb']} / Pss {mem['pss_mb']} / private "
            f"{mem['private_mb']} MB.",
        ]
    for r in report.get("reruns", []):
        lines += ["", f"Measured again ({', '.join(r['parts'])}): `{r['command']}` at commit {r['git_commit']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="write the full-scale phantom")
    p.add_argument("dir", type=Path)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p = sub.add_parser("measure", help="measure the data path on it, write results/scale/")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "results" / "scale")
    p.add_argument("--sizes", type=int, nargs="+", default=[384, 512])
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="measure these parts again")
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.dir, args.workers)
    else:
        measure(args.dir, args.out, args.sizes, tuple(p for p in PARTS if p in args.only))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
