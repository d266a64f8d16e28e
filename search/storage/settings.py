"""What a study is held to: the settings it was created with, which every later command must match.

Settings are everything that decides what a trial or the baseline learns: the data settings and the
data's fingerprint, the fixed training fields, the baseline and the search space. A command that
would change any of them on an existing study stops with one line naming the field; trials on other
data or epochs never mix into one study. Runtime settings (device, workers, timeout, storage, quiet)
stay free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna

from boneage_core.config import RUNTIME_FIELDS, TrainConfig
from boneage_core.errors import BoneAgeError
from search.config.specs import StudySpec

SETTINGS_ATTR = "settings"


def _learning_fields(cfg: TrainConfig, searched: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config's fields that decide what it learns: runtime fields and searched ones left out."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS and k not in searched}


SETTINGS_FORMAT = 2  # settings of format 1 lacked the sampler and the pruner, and could not rebuild a study


def study_settings(spec: StudySpec, fingerprint: str | None) -> dict[str, Any]:
    """Everything a study is held to, as stored at its creation; fingerprint None when the command did
    not read the data. Every later command rebuilds the study's spec from this (search.storage.truth)."""
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
