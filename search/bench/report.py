"""The benchmarks' report: the machine and versions they ran on, bench.json and bench.md."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.storage.settings import plain
from search.storage.writes import write_atomic


def machine() -> dict[str, Any]:
    import optuna
    import PIL
    import torchvision

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gb,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def write_report(out: Path, report: dict) -> None:
    write_atomic(out / "bench.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "bench.md", render_markdown(report))


def _met(v: bool | None, skipped: str) -> str:
    return "skipped" if skipped else "n/a" if v is None else "**met**" if v else "**not met**"


def _fmt(v: Any) -> str:
    """A figure as the table shows it: numbers plain, dicts and lists flattened."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "; ".join(_fmt(x) for x in v)
    return plain(v)


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"{report['date']}, `{report['command']}` ({report['mode']} mode, device {report['device']}), "
        f"{report['total_s']:.0f} s in all.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; {m['os']}.  ",
        f"Versions: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, optuna {m['optuna']}, "
        f"Pillow {m['pillow']}, numpy {m['numpy']}.",
        "",
        "Every ratio is measured side by side in this one run; absolute times swing with this machine's load.",
        "",
        "| # | Benchmark | Target | Measured | |",
        "|---|---|---|---|---|",
    ]
    for i, (name, s) in enumerate(report["sections"].items(), 1):
        lines.append(
            f"| {i} | {name} | {s['target']} | {s['skipped'] or s['measured']} | {_met(s['met'], s['skipped'])} |"
        )
    for i, s in enumerate(report["sections"].values(), 1):
        lines += [
            "",
            f"## {i}. {s['title']}",
            "",
            f"Target: {s['target']}. Result: {_met(s['met'], s['skipped'])}.",
            "",
        ]
        if s["skipped"]:
            lines += [f"Skipped: {s['skipped']}.", ""]
        for note in s["notes"]:
            lines.append(f"- {note}")
        if s.get("files"):
            lines += ["", "Curves: " + ", ".join(f"[{f}]({f})" for f in s["files"]) + " (beside this file)."]
        if s["figures"]:
            lines += ["", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in s["figures"].items()]
        lines.append(f"\n({s['seconds']} s)")
    return "\n".join(lines) + "\n"
