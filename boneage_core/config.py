"""TrainConfig: every knob of one training run, frozen; variants come from dataclasses.replace. And
DataSettings, where a study's images come from, frozen alike (here, so that reading a study file
imports no image code)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from boneage_core.errors import BoneAgeError

OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("mse", "l1", "huber")
SCHEDULES = ("none", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PLACEMENTS = ("auto", "device", "host")
MIN_IMAGE_SIZE_PX = 32  # ResNet-50 and most timm nets downsample by 32: smaller gives empty feature maps
MAX_IMAGE_SIZE_PX = 1024  # published bone-age models read 256-800 px; 12,611 images at 1024 px are 13 GB


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet50"  # or "timm:<model name>"
    pretrained: str = "none"  # "none", "imagenet" (local torch/timm cache) or a path to a state dict
    image_size: int = 64  # side of the square input, pixels
    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"
    loss: str = "mse"
    aug_strength: float = 0.5
    aug_intensity: bool = True  # brightness and contrast jitter besides the geometric transform
    use_sex: bool = False
    head_hidden: int = 256
    dropout: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    precision: str = "auto"  # auto: bf16 autocast on CUDA with compute capability 8+, fp16 below, fp32 on CPU
    tta_flip: bool = False  # average predictions over a horizontal flip at evaluation
    data_placement: str = "auto"  # images on the GPU ("device"), streamed from pinned memory ("host"), or auto

    def __post_init__(self):  # every TrainConfig is valid: built once from outside input, trusted after
        _check_train(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that say where and how fast a run goes, not what it learns: free to differ between the
# commands of one study.
RUNTIME_FIELDS = ("device", "data_placement")


class SettingError(BoneAgeError):
    """A field a settings dataclass cannot hold: 'lr = -1.0: must be a positive finite number'."""

    def __init__(self, field: str, value: Any, why: str):
        super().__init__(f"{field} = {value!r}: {why}")


def field_types(cls: type) -> dict[str, type]:
    """{field: its type}, read from each field's default (every settings field has one)."""
    return {f.name: type(f.default) for f in dataclasses.fields(cls)}


def settings_from(cls: type, values: Any, where: str, base: Any = None) -> Any:
    """A settings dataclass (TrainConfig, DataSettings, the search's sampler, pruner and study tables)
    from outside values: a TOML table, --set items, settings stored in a study, a trial's recorded
    config. The one coercion rule, the same for every section: each key is one of the class's fields
    and each value of the field's type, except that a whole number is taken for a float; nothing else
    is converted (a quoted "1e-3" is a string). The class checks its ranges itself (__post_init__), so
    whatever is built is valid and the code that runs it trusts it. base: what the values change
    (default: the class's defaults); where: the section, named in every error."""
    if not isinstance(values, dict):
        raise BoneAgeError(f"[{where}] must be a table")
    values = {key: typed_value(cls, key, value, where) for key, value in values.items()}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except SettingError as exc:
        raise BoneAgeError(f"{where}.{exc}") from None


def typed_value(cls: type, key: str, value: Any, where: str) -> Any:
    """value as field key of cls holds it, by the one coercion rule (see settings_from)."""
    types = field_types(cls)
    if key not in types:
        raise BoneAgeError(f"unknown key '{where}.{key}' (known: {', '.join(types)})")
    want = types[key]
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not (type(value) is want or (want is float and whole)):
        raise BoneAgeError(f"'{where}.{key}' must be {_TYPE_WORDS[want]}, got {value!r}")
    return float(value) if want is float else value


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}

def image_size_problem(px: int) -> str | None:
    """Why an image side is one the backbone cannot read or a cache cannot hold; None when it is fine."""
    if px < MIN_IMAGE_SIZE_PX:
        return f"too small for the backbone, use at least {MIN_IMAGE_SIZE_PX} px"
    if px > MAX_IMAGE_SIZE_PX:
        return (
            f"above {MAX_IMAGE_SIZE_PX} px (a cache of 12,611 images at {px} px would take "
            f"{12611 * px * px / 1e9:.0f} GB); published bone-age models read 256 to 800 px"
        )
    return None


def check_image_size(px: int, where: str) -> None:
    """An image side the backbone can read and a cache can hold, or a BoneAgeError naming where it was set."""
    if (why := image_size_problem(px)) is not None:
        raise BoneAgeError(f"{where} = {px}: {why}")


def _check_train(cfg: TrainConfig) -> None:
    """Raise SettingError for an impossible value; the message names the field and the fix."""

    def bad(field: str, why: str) -> SettingError:
        return SettingError(field, getattr(cfg, field), why)

    if (why := image_size_problem(cfg.image_size)) is not None:
        raise bad("image_size", why)
    if cfg.epochs < 1:
        raise bad("epochs", "must be at least 1")
    if cfg.batch_size < 2:
        raise bad("batch_size", "must be at least 2 (batch norm needs two images)")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise bad("lr", "must be a positive finite number")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise bad("weight_decay", "must be zero or a positive finite number")
    if not 0 <= cfg.seed < 2**32:
        raise bad("seed", "must lie in [0, 2^32)")
    if not 0.0 <= cfg.aug_strength <= 1.0:
        raise bad("aug_strength", "must lie in [0, 1]")
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad("dropout", "must lie in [0, 1)")
    if cfg.head_hidden < 1:
        raise bad("head_hidden", "must be at least 1")
    for field, allowed in (
        ("optimizer", OPTIMIZERS),
        ("loss", LOSSES),
        ("schedule", SCHEDULES),
        ("precision", PRECISIONS),
        ("data_placement", PLACEMENTS),
    ):
        if getattr(cfg, field) not in allowed:
            raise bad(field, f"choose one of {', '.join(allowed)}")
    if cfg.backbone != "resnet50" and not cfg.backbone.startswith("timm:"):
        raise bad("backbone", "use 'resnet50' or 'timm:<model name>'")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise bad("device", "use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DataSettings:
    """Where a study's images come from and how they are cut: a study file's [data] table."""

    source: str = "phantom"  # "phantom" or a directory holding RSNA data as downloaded
    image_size: int = 64  # side of the square cache, pixels (the baseline's and the fixed fields')
    max_images: int = 0  # 0 = all; a cap per split for quick runs
    seed: int = 0  # of the phantom and of the train/val/test split
    phantom_n: int = 1000  # images in the phantom

    def __post_init__(self):
        if (why := image_size_problem(self.image_size)) is not None:
            raise SettingError("image_size", self.image_size, why)
        if self.max_images < 0:
            raise SettingError("max_images", self.max_images, "must be 0 (all) or more")
        if self.phantom_n < 20:
            raise SettingError("phantom_n", self.phantom_n, "must be at least 20 (a split needs images in each part)")
        if not 0 <= self.seed < 2**32:
            raise SettingError("seed", self.seed, "must lie in [0, 2^32)")


# The original project's recipe, field by field: a pretrained ResNet-50 on one gray channel with a small
# regression head, Adam at lr 1e-3 held constant, MSE, batch 32, 5 epochs, no sex input, and its
# torchvision transforms (rotation 20 degrees, horizontal flip, affine shift 10% and scale 0.85-1.15),
# which are our geometric augmentation at strength 1 without intensity jitter. A study's [baseline]
# starts from this, never from its [train] table, so tuning [train] cannot move the yardstick.
BASELINE = TrainConfig(
    backbone="resnet50",
    pretrained="imagenet",
    epochs=5,
    batch_size=32,
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    schedule="none",
    loss="mse",
    aug_strength=1.0,
    aug_intensity=False,
    use_sex=False,
    head_hidden=256,
    dropout=0.0,
)
