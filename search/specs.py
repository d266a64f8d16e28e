"""Study definitions: studies/NAME.toml (or a path) plus --set overrides -> a checked StudySpec."""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boneage_core import BoneAgeError
from boneage_core.config import MIN_IMAGE_SIZE_PX, SEED_RECIPE, TrainConfig, coerce_field, make_config
from search.space import ParamSpec, parse_space

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
SECTIONS = ("data", "train", "space", "sampler", "pruner", "baseline", "study")
DATA_DEFAULTS: dict[str, Any] = {"source": "phantom", "image_size": 64, "max_images": 0, "seed": 0, "phantom_n": 1000}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
SAMPLER_KEYS = {"name": str, "seed": int, "n_startup_trials": int}
STUDY_KEYS = {"name": str, "heartbeat_interval": int, "grace_period": int}
# Optuna's pruners accept these below their minimum and fail later, inside a trial (hyperband's
# reduction_factor 1 divides by zero after the first epoch)
PRUNER_MINIMA = {"n_startup_trials": 0, "n_warmup_steps": 0, "min_resource": 1, "reduction_factor": 2}
SEED_LIMIT = 2**32  # numpy and Optuna's samplers take seeds below 2^32
PRUNER_KEYS = {
    "name": str,
    "n_startup_trials": int,
    "n_warmup_steps": int,
    "min_resource": int,
    "reduction_factor": int,
}


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    data: dict[str, Any]
    train: TrainConfig  # fixed fields, image_size copied from [data] (a [space.image_size] overrides it)
    space: dict[str, ParamSpec]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    baseline: TrainConfig  # the seed recipe: SEED_RECIPE with [baseline] applied, never [train]
    heartbeat_interval_s: int = 10
    grace_period_s: int = 30  # a RUNNING trial silent this long belongs to a dead worker
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # {field: [TOML value, --set value]}: how --set baseline.* modified the study file's seed recipe
    baseline_changes: dict[str, list[Any]] = field(default_factory=dict)


STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_study_name(name: str, where: str) -> str:
    """A study name becomes a file and folder name (studies/NAME.db, results/NAME/, checkpoints/NAME/):
    a plain name only, never a path or '..', whichever way it was given."""
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise BoneAgeError(
            f"{where} = {name!r}: a study name uses letters, digits, '_', '-' and '.', and does not start with "
            "'.' or contain '..'"
        )
    return name


def find_study_file(study: str) -> Path:
    """A name in studies/ or a path to a TOML file."""
    candidate = Path(study)
    if candidate.suffix == ".toml" or "/" in study:
        if not candidate.is_file():
            raise BoneAgeError(f"study file {candidate} does not exist")
        return candidate
    check_study_name(study, "--study")
    path = STUDIES_DIR / f"{study}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))
        raise BoneAgeError(f"unknown study '{study}': no {path}; known studies: {', '.join(known) or 'none'}")
    return path


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


def _check_section(section: dict[str, Any], keys: dict[str, type], where: str) -> dict[str, Any]:
    out = {}
    for k, v in section.items():
        if k not in keys:
            raise BoneAgeError(f"unknown key '{where}.{k}' (known: {', '.join(keys)})")
        want = keys[k]
        if want is int and isinstance(v, bool) or not isinstance(v, want):
            raise BoneAgeError(f"'{where}.{k}' must be {want.__name__}, got {v!r}")
        out[k] = v
    return out


def load_spec(study: str, overrides: list[str] | None = None, data_dir: str | None = None) -> StudySpec:
    path = find_study_file(study)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BoneAgeError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise BoneAgeError(f"{path}: tables or arrays nested too deeply to be a study file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BoneAgeError(f"{path}: cannot read study file ({exc})") from None
    from_file = copy.deepcopy(raw)
    raw = apply_overrides(raw, list(overrides or []) + ([f"data.source={data_dir!r}"] if data_dir else []))
    for section in raw:
        if section not in SECTIONS:
            raise BoneAgeError(f"{path}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
    data = dict(DATA_DEFAULTS)
    data.update(_check_section(raw.get("data", {}), {k: type(v) for k, v in DATA_DEFAULTS.items()}, "data"))
    if data["max_images"] < 0 or data["phantom_n"] < 20:
        raise BoneAgeError("data.max_images must be >= 0 and data.phantom_n >= 20")
    check_seed(data["seed"], "data.seed")
    train_values = {k: coerce_field(k, v) for k, v in raw.get("train", {}).items()}
    if "image_size" in train_values:
        raise BoneAgeError("set the image size as data.image_size: the cache is built at that size")
    train = make_config({**train_values, "image_size": data["image_size"]})
    space = parse_space(raw.get("space", {}))
    if "image_size" in space:
        p = space["image_size"]
        smallest = min(p.choices) if p.type == "categorical" else p.low
        if smallest < MIN_IMAGE_SIZE_PX:
            raise BoneAgeError(
                f"[space.image_size]: {smallest:g} px is too small for the backbone, use at least {MIN_IMAGE_SIZE_PX}"
            )
    check_space_values(space, train)
    sampler = {"name": "tpe", "seed": 0, **_check_section(raw.get("sampler", {}), SAMPLER_KEYS, "sampler")}
    pruner = {"name": "median", **_check_section(raw.get("pruner", {}), PRUNER_KEYS, "pruner")}
    if sampler["name"] not in SAMPLERS:
        raise BoneAgeError(f"sampler.name = {sampler['name']!r}: use one of {', '.join(SAMPLERS)}")
    if pruner["name"] not in PRUNERS:
        raise BoneAgeError(f"pruner.name = {pruner['name']!r}: use one of {', '.join(PRUNERS)}")
    check_seed(sampler["seed"], "sampler.seed")
    for key, least in PRUNER_MINIMA.items():
        if key in pruner and pruner[key] < least:
            raise BoneAgeError(f"pruner.{key} = {pruner[key]}: must be at least {least}")
    if sampler.get("n_startup_trials", 0) < 0:
        raise BoneAgeError(f"sampler.n_startup_trials = {sampler['n_startup_trials']}: must be at least 0")
    baseline = seed_recipe(raw.get("baseline", {}), data["image_size"], train)
    baseline_in_file = seed_recipe(from_file.get("baseline", {}), data["image_size"], train)
    changes = {
        k: [v, getattr(baseline, k)]
        for k, v in baseline_in_file.to_dict().items()
        if v != getattr(baseline, k) and k != "device"
    }
    study = {
        "name": path.stem,
        "heartbeat_interval": 10,
        "grace_period": 30,
        **_check_section(raw.get("study", {}), STUDY_KEYS, "study"),
    }
    check_study_name(
        study["name"], "study.name" if "name" in raw.get("study", {}) else f"the study file name {path.name}"
    )
    if not 0 < study["heartbeat_interval"] < study["grace_period"]:
        raise BoneAgeError("study.heartbeat_interval must be positive and below study.grace_period")
    return StudySpec(
        study["name"],
        path,
        data,
        train,
        space,
        sampler,
        pruner,
        baseline,
        study["heartbeat_interval"],
        study["grace_period"],
        raw,
        changes,
    )


def check_seed(value: int, where: str) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise BoneAgeError(f"{where} = {value}: a seed must lie in [0, 2^32)")
    return value


def check_space_values(space: dict[str, ParamSpec], train: TrainConfig) -> None:
    """Every value the space can draw makes a valid config: each choice, and both ends of a range (the
    checks are bounds, so the ends decide). A bad value would otherwise fail trial after trial."""
    for p in space.values():
        values = p.choices if p.type == "categorical" else (p.low, p.high)
        for v in values:
            try:
                make_config({p.name: int(v) if p.type == "int" else v}, train)
            except BoneAgeError as exc:
                raise BoneAgeError(f"[space.{p.name}] can draw {v!r}, which is not a valid value: {exc}") from None


def seed_recipe(table: dict[str, Any], image_size: int, train: TrainConfig) -> TrainConfig:
    """The study's seed recipe: SEED_RECIPE with its [baseline] table applied. Only where and how
    numerically a run goes (device, precision) come from [train], the same for every recipe."""
    if not isinstance(table, dict):
        raise BoneAgeError("[baseline] must be a table of training fields")
    base = dataclasses.replace(SEED_RECIPE, image_size=image_size, device=train.device, precision=train.precision)
    return make_config(table, base)
