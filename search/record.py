"""What a study records about itself: the settings it was created with, which every later command must
match, and the commands that wrote to it (provenance), so its numbers can be trusted and rerun.

Settings are everything that decides what a trial or the seed recipe learns: the data settings and the
data's fingerprint, the fixed training fields, the seed recipe and the search space. A command that
would change any of them on an existing study stops with one line naming the field; trials on other
data or epochs never mix into one study. Runtime settings (device, workers, timeout, storage, quiet)
stay free.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import platform
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from boneage_core.config import RUNTIME_FIELDS, TrainConfig
from boneage_core.errors import BoneAgeError
from search.specs import StudySpec
from search.study import redact_argv

if TYPE_CHECKING:
    from boneage_core.rsna import Skipped

SETTINGS_ATTR = "settings"
COMMAND_PREFIX = "command:"
SKIPPED_ATTR = "skipped_images"
VAL_PREDICTIONS_ATTR = "val_pred_months"


def _learning_fields(cfg: TrainConfig, searched: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config's fields that decide what it learns: runtime fields and searched ones left out."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS and k not in searched}


SETTINGS_FORMAT = 2  # settings of format 1 lacked the sampler and the pruner, and could not rebuild a study


def study_settings(spec: StudySpec, fingerprint: str | None) -> dict[str, Any]:
    """Everything a study is held to, as stored at its creation; fingerprint None when the command did
    not read the data. Every later command rebuilds the study's spec from this (search.truth)."""
    data = dataclasses.asdict(spec.data)
    if data["source"] != "phantom":
        data["source"] = str(Path(data["source"]).expanduser().resolve())
    return {
        "format": SETTINGS_FORMAT,
        "data": data,
        "data_fingerprint": fingerprint,
        "train": _learning_fields(spec.train, tuple(spec.space)),
        "baseline": _learning_fields(spec.baseline),
        "space": {k: dataclasses.asdict(p) for k, p in spec.space.items()},
        "sampler": dataclasses.asdict(spec.sampler),
        "pruner": dataclasses.asdict(spec.pruner),
    }


def differences(stored: Any, given: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, stored, given) for every leaf that differs; JSON round trip so tuples equal lists."""
    stored, given = json.loads(json.dumps(stored)), json.loads(json.dumps(given))
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for key in sorted(set(stored) | set(given), key=str):
            out += differences(stored.get(key), given.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if stored == given else [(prefix, stored, given)]


def check_settings(study: optuna.Study, given: dict[str, Any], store: bool = True) -> None:
    """Store the settings on a new study; on an existing one refuse any change with one line.

    The data fingerprint is compared only when both sides read the data. When it matches, the data's
    path may differ (the same data moved to another disk): it cannot change a result. store=False for
    commands that find the study made (baseline, retrain): only run creates one."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        if store:
            study.set_user_attr(SETTINGS_ATTR, given)
        return
    fingerprints = stored.get("data_fingerprint"), given.get("data_fingerprint")
    if None not in fingerprints and fingerprints[0] != fingerprints[1]:
        source = stored["data"]["source"], given["data"]["source"]
        where = f"{source[0]}, now {source[1]}" if source[0] != source[1] else f"{source[0]}, changed since"
        raise BoneAgeError(
            f"study '{study.study_name}' was made on other data: its images or labels differ ({where}; data "
            f"fingerprint {fingerprints[0]}, now {fingerprints[1]}); restore the data, or start a new study "
            "with --set study.name=<new name>"
        )
    same_data = None not in fingerprints  # and equal: the same data, wherever it lies now
    for field, was, now in differences(stored, given):
        if field == "data_fingerprint" or (field == "data.source" and same_data):
            continue
        raise BoneAgeError(
            f"study '{study.study_name}' was created with {field} = {show_value(was)}, this command gives "
            f"{show_value(now)}; drop the change, or start a new study with --set study.name=<new name>"
        )


def show_value(value: Any) -> str:
    return "(not set)" if value is None else json.dumps(value)


def config_changes(before: TrainConfig, after: TrainConfig) -> dict[str, list[Any]]:
    """{field: [before, after]} for the learning fields that differ: how a recipe was modified."""
    a, b = _learning_fields(before), _learning_fields(after)
    return {k: [a[k], b[k]] for k in a if a[k] != b[k]}


def describe_changes(changes: dict[str, list[Any]]) -> str:
    """'epochs 5 -> 2, lr 0.001 -> 0.0003'"""
    return ", ".join(f"{k} {plain(v[0])} -> {plain(v[1])}" for k, v in changes.items())


def plain(v: Any) -> str:
    """A value as every view writes it: floats short (0.001, 1e-05), the rest as they print."""
    return f"{v:g}" if isinstance(v, float) else str(v)


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "boneage_search": version("boneage-search"),
        "git_commit": git_commit(Path(__file__).resolve().parent.parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def git_commit(repo: Path) -> str | None:
    """The checkout's commit, with ' (local changes)' when tracked files differ from it; None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" (local changes)" if dirty else "")


def command_line(argv: list[str]) -> str:
    """The command as a user would type it again, passwords hidden."""
    return shlex.join(["python", "-m", "search", *redact_argv(argv)])


def provenance(argv: list[str], device: str, fingerprint: str | None, **extra: Any) -> dict[str, Any]:
    """One command's record: what was typed, with which code and versions, on which device and data."""
    return {
        "command": command_line(argv),
        "argv": redact_argv(argv),
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **_versions(),
        "device": device,
        "data_fingerprint": fingerprint,
        **extra,
    }


def record_command(study: optuna.Study, entry: dict[str, Any]) -> None:
    """Add a command's provenance to the study (read back by status and the report). Each command is
    its own attr, so commands on several machines at once never overwrite each other's record."""
    study.set_user_attr(f"{COMMAND_PREFIX}{time.time_ns():020d}:{uuid.uuid4().hex[:8]}", entry)


def epoch_recorder(trial: optuna.Trial, start: float) -> Callable[[int, dict], None]:
    """fit's on_epoch_end for a trial: record the epoch (history, epochs run, wall time), report val MAE,
    raise TrialPruned to prune. What a search trial writes to the study per epoch; the storage benchmark
    writes through it too."""
    history: list[dict] = []

    def on_epoch_end(epoch: int, row: dict) -> None:
        history.append(row)
        trial.set_user_attr("history", history)
        trial.set_user_attr("epochs_run", epoch)
        trial.set_user_attr("wall_time_s", round(time.perf_counter() - start, 2))
        trial.report(row["val_mae_months"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val MAE {row['val_mae_months']:.2f} months after epoch {epoch}")

    return on_epoch_end


def record_outcome(trial: optuna.Trial, start: float, metrics: dict[str, float], val_pred) -> None:
    """What a completed trial writes at its end: wall time, val metrics and its prediction for every val
    image in the split's order (what retrain --bias-correction fits its line on). The storage benchmark
    writes through it too."""
    trial.set_user_attr("wall_time_s", round(time.perf_counter() - start, 2))
    trial.set_user_attr("val_metrics", metrics)
    trial.set_user_attr(VAL_PREDICTIONS_ATTR, [round(float(p), 2) for p in val_pred])


def record_skipped(study: optuna.Study, skipped: list[Skipped]) -> None:
    """Which labelled images the study's commands left out and why, {"split/id": reason}: the search
    records those of train and val, retrain adds the test set's. Written only when it grows."""
    known = dict(study.user_attrs.get(SKIPPED_ATTR, {}))
    grown = {**known, **{f"{s.split}/{s.id}": s.reason for s in skipped}}
    if grown != known:
        study.set_user_attr(SKIPPED_ATTR, grown)


def recorded_commands(study: optuna.Study) -> list[dict[str, Any]]:
    """Every recorded command, oldest first."""
    attrs = study.user_attrs
    return [attrs[k] for k in sorted(k for k in attrs if k.startswith(COMMAND_PREFIX))]


def device_description(name: str) -> str:
    """'cpu (2 threads)' or 'cuda:0 (NVIDIA H200)': where a command ran."""
    import torch

    from boneage_core.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"
