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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The seed project's recipe, field by field: a pretrained ResNet-50 on one gray channel with a small
# regression head, Adam at lr 1e-3 held constant, MSE, batch 32, 5 epochs, no sex input, and its
# torchvision transforms (rotation 20 degrees, horizontal flip, affine shift 10% and scale 0.85-1.15),
# which are our geometric augmentation at strength 1 without intensity jitter. A study's [baseline]
# starts from this, never from its [train] table, so tuning [train] cannot move the yardstick.
SEED_RECIPE = TrainConfig(
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
# Fields that say where and how fast a run goes, not what it learns: free to differ between the
# commands of one study.
RUNTIME_FIELDS = ("device", "data_placement")

FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}


def coerce_field(name: str, value: Any, where: str = "train") -> Any:
    """Value converted to the field's type, or a BoneAgeError naming the field and the expected type."""
    if name not in FIELD_TYPES:
        raise BoneAgeError(f"unknown training field '{where}.{name}'; known fields: {', '.join(sorted(FIELD_TYPES))}")
    want = FIELD_TYPES[name]
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif want is str and isinstance(value, str):
        return value
    raise BoneAgeError(f"'{where}.{name}' must be {want.__name__}, got {value!r}")


def make_config(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A checked TrainConfig from loose values (TOML, CLI strings, stored trial attrs)."""
    clean = {k: coerce_field(k, v) for k, v in values.items()}
    cfg = dataclasses.replace(base or TrainConfig(), **clean)
    check_config(cfg)
    return cfg


def check_image_size(px: int, where: str) -> None:
    """An image side the backbone can read and a cache can hold, or a BoneAgeError naming where it was set."""
    if px < MIN_IMAGE_SIZE_PX:
        raise BoneAgeError(f"{where} = {px}: too small for the backbone, use at least {MIN_IMAGE_SIZE_PX} px")
    if px > MAX_IMAGE_SIZE_PX:
        raise BoneAgeError(
            f"{where} = {px}: above {MAX_IMAGE_SIZE_PX} px (a cache of 12,611 images at {px} px would take "
            f"{12611 * px * px / 1e9:.0f} GB); published bone-age models read 256 to 800 px"
        )


def check_config(cfg: TrainConfig) -> None:
    """Raise BoneAgeError for an impossible combination; the message names the field and the fix."""

    def bad(field: str, why: str) -> BoneAgeError:
        return BoneAgeError(f"train.{field} = {getattr(cfg, field)!r}: {why}")

    check_image_size(cfg.image_size, "train.image_size")
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
    image_size: int = 64  # side of the square cache, pixels (the seed recipe's and the fixed fields')
    max_images: int = 0  # 0 = all; a cap per split for quick runs
    seed: int = 0  # of the phantom and of the train/val/test split
    phantom_n: int = 1000  # images in the phantom
