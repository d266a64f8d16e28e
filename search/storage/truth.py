"""The study is the source of truth once it exists.

A study file (TOML) and --set create a study; from then on every command (a resumed run, baseline,
retrain, report, status) rebuilds the study's spec from the settings the study stored at its creation
(search.storage.settings.study_settings): its data settings, fixed training fields, space, sampler, pruner and
baseline. The study file is read again only for its name and for settings that cannot change a
result (device, data placement, heartbeat); an edit to anything else is ignored, and said by `run`. A
--set or --data given to a later command is checked against the stored settings before any image is
decoded: one that differs is one line and exit 2. retrain's --set train.* and --set baseline.* are
deliberate changes to the recipes it trains, handed over apart (search.cli.commands).
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from boneage_core.config import RUNTIME_FIELDS
from boneage_core.errors import BoneAgeError
from search.config.specs import (
    StudySpec,
    apply_given,
    apply_overrides,
    check_study_name,
    find_study_file,
    load_spec,
    read_toml,
    spec_from_raw,
)
from search.storage.settings import SETTINGS_ATTR, SETTINGS_FORMAT, differences, show_value, study_settings
from search.storage.study import default_storage_url, load_existing_study, open_storage, redact, sqlite_path

DEFAULT_STUDY = "demo"
# What a later command may still take from the study file or --set: where and how a run goes
RUNTIME_KEYS = {"train": RUNTIME_FIELDS, "study": ("heartbeat_interval", "grace_period")}


@dataclass(frozen=True)
class StudyRef:
    """Which study a command addresses: its name, its storage, the study file found for it (None where
    there is none, as for an installed package and a study named only in its storage), and the options
    a user typed to reach it, which every printed next step repeats."""

    name: str
    url: str
    path: Path | None
    given: tuple[str, ...] = ()

    def hint(self, command: str, *extra: str) -> str:
        """A command the user can paste: `python -m search baseline --study x --storage URL`."""
        return shlex.join(["python", "-m", "search", command, *self.given, *extra])


def study_ref(study: str | None, storage: str | None, overrides: list[str]) -> StudyRef:
    """The study named by --study (a name or a TOML path; default demo), --set study.name and
    --storage. A name with no study file is fine for a study that exists in its storage."""
    arg = study or DEFAULT_STUDY
    apply_overrides({}, overrides)  # a malformed --set is told first, whatever the command
    try:
        path: Path | None = find_study_file(arg)
    except BoneAgeError:
        if Path(arg).suffix == ".toml" or "/" in arg:
            raise
        path = None
    raw = apply_overrides(copy.deepcopy(read_toml(path)) if path else {}, [o for o in overrides if _key(o) == "study"])
    table = raw.get("study", {})
    named = isinstance(table, dict) and "name" in table
    name = table["name"] if named else path.stem if path else arg
    if not isinstance(name, str):
        raise BoneAgeError(f"'study.name' must be str, got {name!r}")
    check_study_name(name, "study.name" if named else f"the study file name {path.name}" if path else "--study")
    given = (["--study", study] if study else []) + (["--storage", redact(storage)] if storage else [])
    if any(o.partition("=")[0].strip() == "study.name" for o in overrides):
        given += ["--set", f"study.name={name}"]
    return StudyRef(name, storage or default_storage_url(name), path, tuple(given))


def _key(override: str) -> str:
    return override.partition("=")[0].strip().split(".")[0]


def stored_settings(study: optuna.Study) -> dict[str, Any]:
    """The settings the study was created with; one line for a study this version cannot rebuild."""
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if settings is None:
        raise BoneAgeError(
            f"study '{study.study_name}' holds no boneage-search settings: it was not created by "
            "`python -m search run`; start one with another name (--set study.name=<new name>)"
        )
    if settings.get("format") != SETTINGS_FORMAT:
        raise BoneAgeError(
            f"study '{study.study_name}' was made by an older version of boneage-search, whose stored settings "
            "cannot rebuild it; start a new study with --set study.name=<new name>"
        )
    return settings


def raw_from_settings(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """A stored study's settings in the shape of a study file, to be parsed like one."""
    space = {}
    for key, p in settings["space"].items():
        if p["type"] == "categorical":
            space[key] = {"type": "categorical", "choices": list(p["choices"])}
        else:
            space[key] = {"type": p["type"], "low": p["low"], "high": p["high"], "log": p["log"]}
            if p["step"] is not None:
                space[key]["step"] = p["step"]
    return {
        "data": dict(settings["data"]),
        "train": {k: v for k, v in settings["train"].items() if k != "image_size"},
        "space": space,
        "sampler": dict(settings["sampler"]),
        "pruner": dict(settings["pruner"]),
        "baseline": dict(settings["baseline"]),
        "study": {"name": name},
    }


def runtime_settings(ref: StudyRef) -> dict[str, dict[str, Any]]:
    """The study file's settings that cannot change a result (device, data placement, heartbeat)."""
    raw = read_toml(ref.path) if ref.path else {}
    out: dict[str, dict[str, Any]] = {}
    for section, keys in RUNTIME_KEYS.items():
        table = raw.get(section, {})
        if isinstance(table, dict):
            out[section] = {k: table[k] for k in keys if k in table}
    return out


def spec_from_study(study: optuna.Study, ref: StudyRef, overrides: list[str], data_dir: str | None = None) -> StudySpec:
    """The study's spec as it was created, with the runtime settings of its file and --set; every other
    --set (and --data's path, checked later against the data's fingerprint) must equal what the study
    stored, or this is one line naming the field, before any image is decoded."""
    settings = stored_settings(study)
    try:
        raw = raw_from_settings(settings, ref.name)
        spec_from_raw(copy.deepcopy(raw), ref.path, ref.name)
    except (BoneAgeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BoneAgeError(
            f"study '{ref.name}' holds settings this version cannot read ({type(exc).__name__}: {exc}); the "
            "storage was edited or damaged: restore a copy, or start a new study with --set study.name=<new name>"
        ) from None
    for section, values in runtime_settings(ref).items():
        raw.setdefault(section, {}).update(values)
    refuse_searched(overrides, tuple(settings["space"]), ref.name)
    spec = spec_from_raw(apply_given(raw, overrides, data_dir), ref.path, ref.name)
    given = study_settings(spec, None)
    for field, was, now in differences(settings, given):
        if field in ("data.source", "data_fingerprint"):  # a moved copy: its fingerprint decides, once read
            continue
        raise BoneAgeError(
            f"study '{ref.name}' was created with {field} = {show_value(was)}, this command gives "
            f"{show_value(now)}; a study keeps its settings: drop the change, or start a new study with "
            "--set study.name=<new name>"
        )
    return spec


def refuse_searched(overrides: list[str], searched: tuple[str, ...], name: str) -> None:
    """--set train.FIELD for a field the study searches: a fixed value would change nothing."""
    for key in (o.partition("=")[0].strip() for o in overrides if _key(o) == "train"):
        if key.split(".", 1)[1] in searched:
            raise BoneAgeError(
                f"--set {key}: study '{name}' searches {key.split('.', 1)[1]}, so a fixed value changes nothing "
                "(set the range in [space], or retrain --set train.* to change the tuned recipes)"
            )


def existing_study(ref: StudyRef) -> optuna.Study | None:
    """The study when its storage holds it with its settings; None for a study still to be created
    (no storage yet, no such study, or one created without settings by a run killed at its start)."""
    path = sqlite_path(ref.url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):  # empty: SQLite's new database
        return None
    storage = open_storage(ref.url, create=False)
    try:
        study = optuna.load_study(study_name=ref.name, storage=storage)
    except KeyError:
        return None
    if SETTINGS_ATTR not in study.user_attrs and not study.get_trials(deepcopy=False):
        return None
    return study


def spec_for_run(ref: StudyRef, overrides: list[str], data_dir: str | None) -> tuple[StudySpec, bool]:
    """What `run` searches: a new study's spec from its file and --set, or an existing study's own;
    True when the study exists."""
    study = existing_study(ref)
    if study is None:
        if ref.path is None:
            find_study_file(ref.name)  # the one-line "unknown study" error, with the known ones
        spec = load_spec(str(ref.path), overrides, data_dir)
        refuse_searched(overrides, tuple(spec.space), spec.name)
        return spec, False
    return spec_from_study(study, ref, overrides, data_dir), True


def file_edits(ref: StudyRef, study_spec: StudySpec, overrides: list[str], data_dir: str | None) -> str | None:
    """How the study file (with the same --set) now departs from what the study keeps, in words, or
    None: an edit after creation is ignored, and `run` says so."""
    if ref.path is None:
        return None
    try:
        from_file = study_settings(load_spec(str(ref.path), overrides, data_dir), None)
    except BoneAgeError:
        return f"{ref.path} no longer reads as a study file"
    kept = study_settings(study_spec, None)
    changed = [f for f, _, _ in differences(kept, from_file) if f not in ("data.source", "data_fingerprint")]
    if not changed:
        return None
    return f"{ref.path} differs from the study's stored settings ({', '.join(changed)}); the study keeps its own"


def open_existing(
    ref: StudyRef, overrides: list[str], data_dir: str | None, read_only: bool = False
) -> tuple[optuna.Study, StudySpec]:
    """A study that must exist (baseline, retrain, report, status), and its spec."""
    study = load_existing_study(ref.name, ref.url, read_only=read_only, run_hint=ref.hint("run"))
    return study, spec_from_study(study, ref, overrides, data_dir)
