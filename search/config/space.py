"""The search space: parsed from a study's [space.*] tables; suggest_config is the only caller of
trial.suggest_*. A trial records the config it trained, which retrain reads back as it is."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import optuna

from boneage_core import BoneAgeError
from boneage_core.config import TrainConfig, field_types, typed_value

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
    types = field_types(TrainConfig)
    if name not in types:
        raise BoneAgeError(f"{where}: '{name}' is not a training field; known: {', '.join(sorted(types))}")
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
        return ParamSpec(name, kind, choices=tuple(typed_value(TrainConfig, name, c, where) for c in choices))
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
    if kind == "int" and types[name] is not int:
        raise BoneAgeError(f"{where}: type int does not fit field '{name}' ({types[name].__name__})")
    if kind == "float" and types[name] is not float:
        raise BoneAgeError(f"{where}: type float does not fit field '{name}' ({types[name].__name__})")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise BoneAgeError(f"{where}: an int range needs whole-number ends, got low = {low} and high = {high}")
    step = table.get("step")
    if step is not None:
        if not isinstance(step, int | float) or isinstance(step, bool) or log or not step > 0:
            raise BoneAgeError(f"{where}: 'step' must be a positive number and cannot be combined with log")
        if kind == "int" and not float(step).is_integer():
            raise BoneAgeError(f"{where}: an int range needs a whole-number step, got {step}")
        if step > high - low > 0:
            raise BoneAgeError(f"{where}: step = {step} is larger than the range {low} to {high}")
    return ParamSpec(name, kind, float(low), float(high), log, step)


def parse_space(tables: dict[str, Any]) -> dict[str, ParamSpec]:
    return {name: parse_param(name, t if isinstance(t, dict) else {}) for name, t in tables.items()}


def suggest_config(trial: optuna.trial.BaseTrial, base: TrainConfig, space: dict[str, ParamSpec]) -> TrainConfig:
    """base with every searched field drawn from the trial (the space's ends and choices were checked
    when it was parsed, so every draw makes a valid TrainConfig)."""
    values: dict[str, Any] = {}
    for p in space.values():
        if p.type == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return dataclasses.replace(base, **values)
