"""python -m search bench: the performance benchmarks, each a ratio measured side by side in one run.

1. data path: the original project's PIL + DataLoader pipeline vs the decode-once cache + tensor augmentation
2. training overhead: a fit() epoch on cached data vs forward/backward/step on tensors in memory
3. search efficiency: pruning vs none, TPE + pruning vs random search at an equal epoch budget, over
   sampler seeds
4. storage overhead: per-trial cost of SQLite and PostgreSQL, 1 and 2 workers
5. GPU throughput: ResNet-50 training images/s at 224 and 512 px (only where CUDA is visible)

Figures go to <out>/bench.json and <out>/bench.md, rewritten after each finished section. Absolute
times depend on the machine; the targets are about ratios measured in the same run, so they compare
like with like.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from boneage_core.device import resolve_device
from boneage_core.errors import BoneAgeError, cannot_write
from search.bench import DEFAULT_POSTGRES_URL
from search.bench.common import Sizes
from search.bench.data_path import bench_data_path
from search.bench.gpu_throughput import bench_gpu_throughput
from search.bench.report import machine, write_report
from search.bench.search_efficiency import bench_search_efficiency
from search.bench.storage import bench_storage, postgres_dsn
from search.bench.training_overhead import bench_training_overhead
from search.storage.provenance import command_line

BENCHES: dict[str, Callable[..., dict]] = {
    "data_path": bench_data_path,
    "training_overhead": bench_training_overhead,
    "search_efficiency": bench_search_efficiency,
    "storage": bench_storage,
    "gpu_throughput": bench_gpu_throughput,
}


SECTIONS = tuple(BENCHES)
RESUMABLE = {"search_efficiency"}  # with --work, what a rerun reads back instead of running again


@contextlib.contextmanager
def _scratch(work_dir: str | Path | None) -> Iterator[Path]:
    """The benchmarks' scratch directory: work_dir, kept (made if missing), or a temporary one."""
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="boneage-bench-") as tmp:
            yield Path(tmp)
        return
    path = Path(work_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(f"the work directory {path}", exc, verb="create") from None
    yield path


def parse_only(text: str | None) -> list[str]:
    if text is None:
        return list(SECTIONS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise BoneAgeError(
            f"--only {text!r}: unknown benchmark {', '.join(unknown) or '(none)'}; choose from {', '.join(SECTIONS)}"
        )
    return names


def run_bench(
    out_dir: str | Path,
    quick: bool = False,
    device: str = "auto",
    only: str | None = None,
    postgres: str = DEFAULT_POSTGRES_URL,
    search_trials: int | None = None,
    search_seeds: int | None = None,
    log: Callable[[str], None] = tqdm.write,
    argv: list[str] | None = None,
    work_dir: str | Path | None = None,
    search_jobs: int | None = None,
) -> dict:
    """Run the named benchmarks (default all) and write <out_dir>/bench.json and bench.md after each.
    argv: the command line as typed, recorded with its passwords hidden. work_dir keeps the scratch
    files there instead of in a temporary directory: a rerun with the same one reads back the
    search-efficiency arms that finished (the other benchmarks start afresh). search_jobs: sampler
    seeds of the search-efficiency benchmark run at once, each process on its share of the cores."""
    names = parse_only(only)
    dev = resolve_device(device)
    if "storage" in names:
        postgres_dsn(postgres)  # a URL the driver cannot read is said now, not after the sections before it
    sizes = Sizes.quick() if quick else Sizes()
    if search_trials:
        sizes.search_trials = search_trials
    if search_seeds:
        sizes.search_seeds = tuple(range(search_seeds))
    if search_jobs:
        sizes.search_jobs = search_jobs
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(f"the output directory {out}", exc, verb="create") from None
    threads = torch.get_num_threads()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if quick else "full",
        "command": command_line(argv) if argv is not None else "run_bench()",
        "device": str(dev),
        "machine": machine(),
        "sections": {},
    }
    start = time.perf_counter()
    with _scratch(work_dir) as tmp:
        for name in (bar := tqdm(names, desc="bench", unit="section", dynamic_ncols=True)):
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            work = Path(tmp) / name
            if name not in RESUMABLE:
                shutil.rmtree(work, ignore_errors=True)  # a kept work directory: these start afresh
            work.mkdir(exist_ok=True)
            try:
                result = BENCHES[name](sizes=sizes, work=work, device=dev, quick=quick, postgres=postgres, out=out)
            finally:
                torch.set_num_threads(threads)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report["sections"][name] = result
            log(f"{name}: {result['measured']}")
            for note in result.get("notes", []):  # a skipped part is said here too, not only in bench.md
                log(f"  note: {note}")
            report["total_s"] = round(time.perf_counter() - start, 1)
            write_report(out, report)  # each finished section is kept, whatever a later one does
    return report
