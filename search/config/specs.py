"""Study definitions: studies/NAME.toml (or a path, or the packaged search/config/studies/NAME.toml) plus --set
overrides -> a checked StudySpec."""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boneage_core.config import (
    BASELINE,
    MAX_IMAGE_SIZE_PX,
    MIN_IMAGE_SIZE_PX,
    DataSettings,
    SettingError,
    TrainConfig,
    settings_from,
)
from boneage_core.errors import BoneAgeError
from search.config.space import ParamSpec, parse_space

SECTIONS = ("data", "train", "space", "sampler", "pruner", "baseline", "study")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
SEED_LIMIT = 2**32  # numpy and Optuna's samplers take seeds below 2^32


@dataclass(frozen=True)
class SamplerSettings:
    """[sampler]: which Optuna sampler proposes the trials."""

    name: str = "tpe"  # tpe | random
    seed: int = 0
    n_startup_trials: int = 10  # TPE's random trials before it models the space

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise SettingError("name", self.name, f"use one of {', '.join(SAMPLERS)}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise SettingError("seed", self.seed, "a seed must lie in [0, 2^32)")
        if self.n_startup_trials < 0:
            raise SettingError("n_startup_trials", self.n_startup_trials, "must be at least 0")


@dataclass(frozen=True)
class PrunerSettings:
    """[pruner]: which trials stop early. Each pruner reads the fields it knows."""

    name: str = "median"  # median | hyperband | successive_halving | none
    n_startup_trials: int = 5  # median: trials that run in full before any is pruned
    n_warmup_steps: int = 1  # median: epochs before a trial can be pruned
    min_resource: int = 1  # hyperband, successive_halving: epochs of the first rung
    reduction_factor: int = 3  # hyperband, successive_halving: 1/k of the trials go on at each rung

    def __post_init__(self):
        if self.name not in PRUNERS:
            raise SettingError("name", self.name, f"use one of {', '.join(PRUNERS)}")
        for key, least in PRUNER_MINIMA.items():
            if getattr(self, key) < least:
                raise SettingError(key, getattr(self, key), f"must be at least {least}")


# Optuna's pruners accept these below their minimum and fail later, inside a trial (hyperband's
# reduction_factor 1 divides by zero after the first epoch)
PRUNER_MINIMA = {"n_startup_trials": 0, "n_warmup_steps": 0, "min_resource": 1, "reduction_factor": 2}
MAX_HEARTBEAT_S = 3600  # a longer interval overflows the heartbeat thread's wait (and detects nothing)


@dataclass(frozen=True)
class StudyOptions:
    """[study]: the study's name (default: the file's) and how dead workers are detected."""

    name: str = ""
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats
    grace_period: int = 30  # a RUNNING trial silent this long belongs to a dead worker

    def __post_init__(self):
        if self.name:
            check_study_name(self.name, "name")
        if not 0 < self.heartbeat_interval < self.grace_period:
            raise SettingError("heartbeat_interval", self.heartbeat_interval, "must be positive and below grace_period")
        if self.heartbeat_interval > MAX_HEARTBEAT_S:
            raise SettingError("heartbeat_interval", self.heartbeat_interval, f"must be at most {MAX_HEARTBEAT_S} s")


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    data: DataSettings
    train: TrainConfig  # fixed fields, image_size copied from [data] (a [space.image_size] overrides it)
    space: dict[str, ParamSpec]
    sampler: SamplerSettings
    pruner: PrunerSettings
    baseline: TrainConfig  # the baseline: BASELINE with [baseline] applied, never [train]
    heartbeat_interval_s: int
    grace_period_s: int


STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_STUDY_NAME = 100  # studies/NAME.db, NAME-artifacts/, results/NAME/: well inside a file name's 255 bytes


def check_study_name(name: str, where: str) -> str:
    """A study name becomes a file and folder name (studies/NAME.db, results/NAME/, checkpoints/NAME/):
    a plain name only, never a path or '..', whichever way it was given."""
    if len(name) > MAX_STUDY_NAME:
        raise BoneAgeError(f"{where} is {len(name)} characters long: a study name has at most {MAX_STUDY_NAME}")
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise BoneAgeError(
            f"{where} = {name!r}: a study name uses letters, digits, '_', '-' and '.', and does not start with "
            "'.' or contain '..'"
        )
    return name


def packaged_studies() -> Path:
    """The folder of study files this package ships (search/config/studies/, package data), as a real path:
    an installed wheel has it as much as a checkout does."""
    folder = importlib.resources.files("search.config") / "studies"
    if not isinstance(folder, Path):  # a zipped install: nothing on disk to read or show
        raise BoneAgeError(f"the packaged studies are not files on disk ({folder}); install search unzipped")
    return folder


def find_study_file(study: str) -> Path:
    """A path to a TOML file, or a name: ./studies/NAME.toml of the current directory when it exists
    (the copy a user edits), else the one this package ships (search/config/studies/NAME.toml)."""
    candidate = Path(study)
    if candidate.suffix == ".toml" or "/" in study:
        if not candidate.is_file():
            raise BoneAgeError(f"study file {candidate} does not exist")
        return candidate
    check_study_name(study, "--study")
    folders = (Path("studies"), packaged_studies())
    for folder in folders:
        if (folder / f"{study}.toml").is_file():
            return folder / f"{study}.toml"
    known = sorted({p.stem for folder in folders for p in folder.glob("*.toml")})
    raise BoneAgeError(
        f"unknown study '{study}': no studies/{study}.toml here or in {folders[1]}; "
        f"known studies: {', '.join(known) or 'none'}"
    )


def shown_path(path: Path) -> str:
    """A study file's path as a user reads it: relative to the current directory when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(resolved)


def _parse_value(text: str) -> Any:
    """A --set value: TOML syntax if it parses (numbers, true, lists, "strings"), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """--set section.key=value (or section.param.key=value for [space.PARAM]) applied to the TOML dict."""
    for item in overrides:
        if "=" not in item:
            raise BoneAgeError(f"--set {item!r}: expected section.key=value, for example train.epochs=3")
        dotted, _, value = item.partition("=")
        parts = dotted.strip().split(".")
        if len(parts) < 2 or parts[0] not in SECTIONS or not all(parts):
            raise BoneAgeError(f"--set {item!r}: the key must start with one of {', '.join(SECTIONS)}")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BoneAgeError(f"--set {item!r}: '{p}' is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return raw


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BoneAgeError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise BoneAgeError(f"{path}: tables or arrays nested too deeply to be a study file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BoneAgeError(f"{path}: cannot read study file ({exc})") from None


def load_spec(study: str, overrides: list[str] | None = None, data_dir: str | None = None) -> StudySpec:
    """The study file with --set overrides (and --data) applied, every section checked: what a new study
    is created from. An existing study is read back from its storage instead (search.storage.truth)."""
    path = find_study_file(study)
    raw = apply_given(copy.deepcopy(read_toml(path)), overrides, data_dir)
    return spec_from_raw(raw, path)


def apply_given(raw: dict[str, Any], overrides: list[str] | None, data_dir: str | None) -> dict[str, Any]:
    """--set items, then --data DIR as data.source (set as given: no quoting can mangle the path)."""
    raw = apply_overrides(raw, list(overrides or []))
    if data_dir:
        if not isinstance(raw.setdefault("data", {}), dict):
            raise BoneAgeError("[data] must be a table")
        raw["data"]["source"] = data_dir
    return raw


def spec_from_raw(raw: dict[str, Any], path: Path | None, name: str | None = None) -> StudySpec:
    """A TOML-shaped dict (a study file with --set applied, or a stored study's settings) as a checked
    StudySpec. name: the study's name where no file gives it."""
    where = path or Path(f"{name}.toml")
    for section in raw:
        if section not in SECTIONS:
            raise BoneAgeError(f"{where}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
    data = settings_from(DataSettings, raw.get("data", {}), "data")
    train_table = raw.get("train", {})
    if isinstance(train_table, dict) and "image_size" in train_table:
        raise BoneAgeError("set the image size as data.image_size: the cache is built at that size")
    train = settings_from(TrainConfig, train_table, "train", TrainConfig(image_size=data.image_size))
    space = _space(raw.get("space", {}), train)
    baseline = baseline_recipe(raw.get("baseline", {}), data.image_size, train)
    options = _study_options(raw.get("study", {}), where)
    return StudySpec(
        name=options.name,
        path=where,
        data=data,
        train=train,
        space=space,
        sampler=settings_from(SamplerSettings, raw.get("sampler", {}), "sampler"),
        pruner=settings_from(PrunerSettings, raw.get("pruner", {}), "pruner"),
        baseline=baseline,
        heartbeat_interval_s=options.heartbeat_interval,
        grace_period_s=options.grace_period,
    )


def _space(tables: dict[str, Any], train: TrainConfig) -> dict[str, ParamSpec]:
    space = parse_space(tables)
    if "image_size" in space:
        p = space["image_size"]
        smallest = min(p.choices) if p.type == "categorical" else p.low
        largest = max(p.choices) if p.type == "categorical" else p.high
        if smallest < MIN_IMAGE_SIZE_PX:
            raise BoneAgeError(
                f"[space.image_size]: {smallest:g} px is too small for the backbone, use at least {MIN_IMAGE_SIZE_PX}"
            )
        if largest > MAX_IMAGE_SIZE_PX:
            raise BoneAgeError(f"[space.image_size]: {largest:g} px is above the largest cache, {MAX_IMAGE_SIZE_PX} px")
    check_space_values(space, train)
    return space


def _study_options(table: dict[str, Any], path: Path) -> StudyOptions:
    options = settings_from(StudyOptions, table, "study")
    if "name" in table:
        return options
    check_study_name(path.stem, f"the study file name {path.name}")
    return dataclasses.replace(options, name=path.stem)


def check_space_values(space: dict[str, ParamSpec], train: TrainConfig) -> None:
    """Every value the space can draw makes a valid config: each choice, and both ends of a range (the
    checks are bounds, so the ends decide). A bad value would otherwise fail trial after trial."""
    for p in space.values():
        values = p.choices if p.type == "categorical" else (p.low, p.high)
        for v in values:
            try:
                dataclasses.replace(train, **{p.name: int(v) if p.type == "int" else v})
            except SettingError as exc:
                raise BoneAgeError(f"[space.{p.name}] can draw {v!r}, which is not a valid value: {exc}") from None


def baseline_recipe(table: dict[str, Any], image_size: int, train: TrainConfig) -> TrainConfig:
    """The study's baseline: BASELINE (the original project's recipe) with its [baseline] table
    applied. Only where and how numerically a run goes (device, precision) come from [train], the same
    for every recipe."""
    base = dataclasses.replace(BASELINE, image_size=image_size, device=train.device, precision=train.precision)
    return settings_from(TrainConfig, table, "baseline", base)
