"""boneage_core.models: gray conv1 from RGB filters, timm backbones, sex input, safe weight loading."""

from __future__ import annotations

import os

import pytest
import torch
from torchvision.models import resnet50

from boneage_core import BoneAgeError
from boneage_core.config import TrainConfig
from boneage_core.models import build_model


def test_conv1_is_the_sum_of_the_rgb_filters_of_a_saved_state_dict(tmp_path):
    torch.manual_seed(0)
    rgb = resnet50(weights=None)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    model = build_model(TrainConfig(pretrained=str(tmp_path / "rgb.pth")))
    expected = rgb.conv1.weight.sum(dim=1, keepdim=True)
    assert model.backbone.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.backbone.conv1.weight, expected)
    assert torch.equal(model.backbone.layer4[2].conv3.weight, rgb.layer4[2].conv3.weight)
    # a gray image x gives the response the RGB image (x, x, x) gave
    x = torch.randn(1, 1, 64, 64)
    assert torch.allclose(model.backbone.conv1(x), rgb.conv1(x.repeat(1, 3, 1, 1)), atol=1e-4)


@pytest.mark.parametrize("backbone", ["resnet50", "timm:resnet10t", "timm:convnext_atto"])
@pytest.mark.parametrize("use_sex", [False, True])
def test_forward_and_backward_give_one_age_per_image(backbone, use_sex):
    model = build_model(TrainConfig(backbone=backbone, use_sex=use_sex, head_hidden=16))
    x = torch.randn(3, 1, 64, 64)
    out = model(x, torch.tensor([True, False, True]))
    assert out.shape == (3,)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_sex_input_changes_the_prediction():
    torch.manual_seed(0)
    model = build_model(TrainConfig(backbone="timm:resnet10t", use_sex=True, head_hidden=16)).eval()
    x = torch.randn(1, 1, 64, 64)
    assert model(x, torch.tensor([True])) != model(x, torch.tensor([False]))


@pytest.mark.parametrize("use_sex", [False, True])
def test_the_head_runs_in_fp32_under_autocast(use_sex):
    """A bf16 head would round ages to steps of 0.3 to 0.6 months: the output must carry fp32 values
    (some not representable in bf16) even when the backbone runs under bf16 autocast."""
    torch.manual_seed(0)
    model = build_model(TrainConfig(backbone="timm:resnet10t", use_sex=use_sex, head_hidden=16)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(8, 1, 64, 64), torch.tensor([True, False] * 4))
    assert out.dtype == torch.float32
    assert not torch.equal(out, out.to(torch.bfloat16).float())


def test_imagenet_weights_missing_offline_fail_fast_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BoneAgeError, match="resnet50-11ad3fa6.pth"):
        build_model(TrainConfig(pretrained="imagenet"))
    with pytest.raises(BoneAgeError, match="not in the local cache"):
        build_model(TrainConfig(backbone="timm:resnet10t", pretrained="imagenet"))
    assert "HF_HUB_OFFLINE" not in os.environ  # the offline switch is put back


def test_timm_weights_are_looked_up_with_the_hub_offline(monkeypatch):
    """Without network the hub retries for about 47 s before it gives up; switched offline it answers
    at once. The hub reads the switch from its constants module as well as the environment."""
    import timm
    from huggingface_hub import constants

    seen = {}

    def create_model(name, pretrained, **kwargs):
        seen.update(constant=constants.HF_HUB_OFFLINE, env=os.environ.get("HF_HUB_OFFLINE"))
        raise OSError("offline, and not in the cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(BoneAgeError, match="not in the local cache"):
        build_model(TrainConfig(backbone="timm:resnet10t", pretrained="imagenet"))
    assert seen == {"constant": True, "env": "1"}
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_imagenet_weights_from_the_local_torch_cache_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rgb = resnet50(weights=None)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    torch.save(rgb.state_dict(), path)
    model = build_model(TrainConfig(pretrained="imagenet"))
    assert torch.allclose(model.backbone.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))


class NotATensor:
    pass


def test_weights_files_are_loaded_with_weights_only(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "evil": NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(BoneAgeError, match="not a plain state dict"):
        build_model(TrainConfig(pretrained=str(tmp_path / "pickle.pth")))


def test_wrong_architecture_and_missing_file_are_clear_errors(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(BoneAgeError, match="wrong architecture"):
        build_model(TrainConfig(pretrained=str(tmp_path / "r18.pth")))
    with pytest.raises(BoneAgeError, match="does not exist"):
        build_model(TrainConfig(pretrained=str(tmp_path / "nope.pth")))


def test_unknown_timm_backbone_is_a_clear_error():
    with pytest.raises(BoneAgeError, match="unknown timm backbone 'no_such_net'"):
        build_model(TrainConfig(backbone="timm:no_such_net"))
