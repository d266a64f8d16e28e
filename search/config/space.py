"""The search space: parsed from a study's [space.*] tables; suggest_config is the only caller of
trial.suggest_*, so the search and the retrain of its best trial read parameters the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from boneage_core import BoneAgeError
from boneage_core.config import FIELD_TYPES, TrainConfig, coerce_field, make_config

PARAM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()


def parse_param(name: str, table: dict[str, Any]) -> ParamSpec:
    """One [space.NAME] table -> ParamSpec, every impossible range refused with the field named."""
    where = f"[space.{name}]"
    if name not in FIELD_TYPES:
        raise BoneAgeError(f"{where}: '{name}' is not a training field; known: {', '.join(sorted(FIELD_TYPES))}")
    known = {"type", "low", "high", "log", "step", "choices"}
    unknown = set(table) - known
    if unknown:
        raise BoneAgeError(f"{where}: unknown key '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(known))})")
    kind = table.get("type")
    if kind not in PARAM_TYPES:
        raise BoneAgeError(f"{where}: type = {kind!r}, use one of {', '.join(PARAM_TYPES)}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BoneAgeError(f"{where}: categorical needs a non-empty list 'choices'")
        return ParamSpec(name, kind, choices=tuple(coerce_field(name, c, "space") for c in choices))
    for key in ("low", "high"):
        if not isinstance(table.get(key), (int, float)) or isinstance(table.get(key), bool):
            raise BoneAgeError(f"{where}: '{key}' must be a number")
    low, high, log = table["low"], table["high"], table.get("log", False)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BoneAgeError(f"{where}: low and high must be finite numbers, got {low} and {high}")
    if not isinstance(log, bool):
        raise BoneAgeError(f"{where}: 'log' must be true or false")
    if low > high:
        raise BoneAgeError(f"{where}: low = {low} is above high = {high}")
    if log and low <= 0:
        raise BoneAgeError(f"{where}: a log range needs low > 0, got low = {low}")
    if kind == "int" and FIELD_TYPES[name] is not int:
        raise BoneAgeError(f"{where}: type int does not fit field '{name}' ({FIELD_TYPES[name].__name__})")
    if kind == "float" and FIELD_TYPES[name] is not float:
        raise BoneAgeError(f"{where}: type float does not fit field '{name}' ({FIELD_TYPES[name].__name__})")
    step = table.get("step")
    if step is not None and (log or step <= 0):
        raise BoneAgeError(f"{where}: 'step' must be positive and cannot be combined with log")
    return ParamSpec(name, kind, float(low), float(high), log, step)


def parse_space(tables: dict[str, Any]) -> dict[str, ParamSpec]:
    return {name: parse_param(name, t if isinstance(t, dict) else {}) for name, t in tables.items()}


def suggest_config(trial: optuna.trial.BaseTrial, base: TrainConfig, space: dict[str, ParamSpec]) -> TrainConfig:
    """base with every searched field drawn from the trial (a live Trial or a FixedTrial)."""
    values: dict[str, Any] = {}
    for p in space.values():
        if p.type == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return make_config(values, base)


def config_from_params(params: dict[str, Any], base: TrainConfig, space: dict[str, ParamSpec]) -> TrainConfig:
    """The config a finished trial trained, rebuilt through suggest_config on a FixedTrial."""
    return suggest_config(optuna.trial.FixedTrial(params), base, space)
