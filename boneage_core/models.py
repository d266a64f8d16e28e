"""Models: ResNet-50 (one gray input channel, small regression head, optional sex input) or any timm
backbone by name. Pretrained weights come from the local torch/timm cache, a state-dict file, or none;
all files are loaded with weights_only=True."""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from boneage_core.errors import BoneAgeError

if TYPE_CHECKING:
    from boneage_core.config import TrainConfig

RESNET50_IMAGENET_FILE = "resnet50-11ad3fa6.pth"  # torchvision ResNet50_Weights.IMAGENET1K_V2


class BoneAgeNet(nn.Module):
    """backbone features (+ sex) -> hidden layer -> one number: the normalized bone age."""

    def __init__(self, backbone: nn.Module, n_features: int, head_hidden: int, dropout: float, use_sex: bool):
        super().__init__()
        self.backbone = backbone
        self.use_sex = use_sex
        self.sex_embed = nn.Linear(1, 16) if use_sex else None
        self.head = nn.Sequential(
            nn.Linear(n_features + (16 if use_sex else 0), head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, 1),
        )

    def forward(self, x: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.backbone(x)
        # the head in fp32 even under autocast: a bf16 output moves in steps of 0.3 to 0.6 months at
        # RSNA's spread of ages, coarser than the differences between recipes
        with torch.autocast(feats.device.type, enabled=False):
            feats = feats.float()
            if self.sex_embed is not None:
                if male is None:
                    raise ValueError("this model was built with use_sex=True and needs the sex of each image")
                sex = male.to(feats.dtype).view(-1, 1) * 2 - 1
                feats = torch.cat([feats, torch.relu(self.sex_embed(sex))], 1)
            return self.head(feats).squeeze(1)


def to_one_channel(weight: torch.Tensor) -> torch.Tensor:
    """RGB conv filters -> gray: the sum of the three, so a gray image x gives the response the RGB
    image (x, x, x) gave."""
    return weight.sum(dim=1, keepdim=True)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, refusing anything but tensors (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise BoneAgeError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text advises weights_only=False: never here
        raise BoneAgeError(
            f"{path}: not a plain state dict (it holds Python objects, which this project never unpickles); "
            "save the weights with torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:
        raise BoneAgeError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BoneAgeError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    return obj


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy matching tensors into the backbone: RGB first convs become gray, classifier heads are
    dropped; any backbone tensor the file lacks or shapes differently is a wrong-architecture error."""
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    clean = {}
    for key, want in own.items():
        if key not in state:
            raise BoneAgeError(f"{source}: wrong architecture for this backbone, it has no tensor '{key}'")
        got = state[key]
        if got.shape != want.shape and got.ndim == 4 and got.shape[1] == 3 and want.shape[1] == 1:
            got = to_one_channel(got)
        if got.shape != want.shape:
            raise BoneAgeError(
                f"{source}: wrong architecture for this backbone, "
                f"'{key}' is {tuple(got.shape)}, expected {tuple(want.shape)}"
            )
        clean[key] = got
    backbone.load_state_dict(clean)


def _resnet50(pretrained: str) -> tuple[nn.Module, int]:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    n_features = net.fc.in_features
    net.fc = nn.Identity()
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained == "imagenet":
        path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET50_IMAGENET_FILE
        if not path.is_file():
            raise BoneAgeError(
                f"ImageNet weights for resnet50 are not in the local cache: place {RESNET50_IMAGENET_FILE} "
                f"at {path}, or pass train.pretrained=<path to a state dict>"
            )
        load_backbone_weights(net, load_state_dict_file(path), str(path))
    elif pretrained != "none":
        load_backbone_weights(net, load_state_dict_file(pretrained), pretrained)
    return net, n_features


@contextlib.contextmanager
def _hub_offline():
    """Without network the HF hub retries for about 47 s; offline mode fails in under a second. The hub
    reads HF_HUB_OFFLINE once at import, so its module constant is switched as well as the variable."""
    from huggingface_hub import constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _timm(name: str, pretrained: str) -> tuple[nn.Module, int]:
    import timm

    if not timm.is_model(name):
        raise BoneAgeError(f"unknown timm backbone '{name}' (see timm.list_models())")
    if pretrained == "imagenet":
        try:
            with _hub_offline():
                net = timm.create_model(name, pretrained=True, num_classes=0, in_chans=1)
        except Exception as exc:
            cache = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
            raise BoneAgeError(
                f"ImageNet weights for timm:{name} are not in the local cache ({type(exc).__name__}); "
                f"download them once into {cache}, or pass train.pretrained=<path to a state dict>"
            ) from None
    else:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=1)
        if pretrained != "none":
            load_backbone_weights(net, load_state_dict_file(pretrained), pretrained)
    return net, net.num_features


def build_model(cfg: TrainConfig) -> BoneAgeNet:
    if cfg.backbone == "resnet50":
        backbone, n_features = _resnet50(cfg.pretrained)
    elif cfg.backbone.startswith("timm:"):
        backbone, n_features = _timm(cfg.backbone.removeprefix("timm:"), cfg.pretrained)
    else:
        raise BoneAgeError(f"unknown backbone '{cfg.backbone}': use 'resnet50' or 'timm:<model name>'")
    return BoneAgeNet(backbone, n_features, cfg.head_hidden, cfg.dropout, cfg.use_sex)
