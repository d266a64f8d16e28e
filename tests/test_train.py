"""boneage_core.train and the phantom: fit learns, reports each epoch, stops on NaN, resumes, repeats."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import boneage_core.device as device_mod
import boneage_core.train as train_mod
from boneage_core import BoneAgeError, TrainingDiverged
from boneage_core.config import DataSettings, TrainConfig
from boneage_core.dataset import prepare
from boneage_core.phantom import (
    LABEL_NOISE_SD_MONTHS,
    NOISE_FLOOR_MAE_MONTHS,
    generate_image,
    maturity_stage,
    render_hand,
)
from boneage_core.rsna import load_table
from boneage_core.train import fit

CFG = TrainConfig(backbone="timm:resnet10t", image_size=32, epochs=3, batch_size=8, aug_strength=0.3, head_hidden=16)


# A recipe that learns the 40-hand phantom in a second: val MAE about a third of the mean predictor's
LEARNS = TrainConfig(
    backbone="timm:resnet10t", image_size=32, epochs=8, batch_size=8, lr=3e-3, aug_strength=0.0, head_hidden=16,
    schedule="cosine", loss="l1", use_sex=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory, phantom_src):
    p = prepare(DataSettings(source=str(phantom_src)), 32, cache_dir=tmp_path_factory.mktemp("c"))
    return p.split("train"), p.split("val")


def test_phantom_is_deterministic_per_seed_and_index():
    a, age_a, male_a, _ = generate_image(0, 5)
    b, age_b, male_b, _ = generate_image(0, 5)
    c, *_ = generate_image(0, 6)
    assert np.array_equal(a, b) and age_a == age_b and male_a == male_b
    assert not np.array_equal(a, c)


def test_phantom_anatomy_matures_with_age_and_girls_mature_earlier():
    def bone_signal(age, male):
        img = render_hand(age, male, np.random.default_rng(7))
        return float((img > 0.4).sum())  # bright pixels: ossified, mineralised bone

    signals = [bone_signal(age, True) for age in (12, 60, 120, 180, 228)]
    assert signals == sorted(signals) and signals[-1] > 2 * signals[0]
    assert maturity_stage(100, male=False) > maturity_stage(100, male=True)
    assert bone_signal(100, male=False) > bone_signal(100, male=True)


def test_phantom_written_in_kaggle_layout_reads_back_through_the_loader(phantom_src):
    table = load_table(phantom_src)
    assert len(table) == 40 and table["age_months"].between(1, 240).all()
    assert 0 < table["male"].sum() < 40
    assert table["id"].tolist() == [str(1000 + i) for i in range(40)]


def test_the_noise_floor_is_what_a_perfect_predictor_scores_on_the_noisy_labels():
    """Labels are the true age plus N(0, SD): predicting every true age exactly still scores the mean
    absolute noise, which no model can expect to beat."""
    noise = np.random.default_rng(0).normal(0.0, LABEL_NOISE_SD_MONTHS, 4_000_000)
    assert np.abs(noise).mean() == pytest.approx(NOISE_FLOOR_MAE_MONTHS, abs=0.006)  # seeded: 0.0016 off
    _, rated, _, true_age = generate_image(0, 3, label_noise_sd=0.0)
    assert rated == round(true_age, 1)  # without noise the label is the true age


def test_fit_learns_beats_the_mean_predictor_and_reports_every_epoch_in_months(small):
    train, val = small
    seen = []
    result = fit(LEARNS, train, val, on_epoch_end=lambda epoch, row: seen.append((epoch, row)))
    assert [e for e, _ in seen] == list(range(1, LEARNS.epochs + 1))
    losses = [row["train_loss"] for _, row in seen]
    assert losses[-1] < losses[0] / 2
    assert result.pred_months.shape == (len(val),)
    assert result.metrics["mae_months"] == pytest.approx(seen[-1][1]["val_mae_months"])
    mean_predictor = np.abs(val.age_months - train.age_months.mean()).mean()
    assert result.metrics["mae_months"] < 0.6 * mean_predictor


def test_fit_is_reproducible_for_a_seed(small):
    train, val = small
    cfg = TrainConfig(backbone="timm:resnet10t", image_size=32, epochs=2, batch_size=8, head_hidden=16)
    a, b = fit(cfg, train, val), fit(cfg, train, val)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert np.array_equal(a.pred_months, b.pred_months)


def test_exception_from_on_epoch_end_stops_training(small):
    train, val = small
    calls = []

    class Stop(Exception):
        pass

    def hook(epoch, row):
        calls.append(epoch)
        raise Stop

    with pytest.raises(Stop):
        fit(CFG, train, val, on_epoch_end=hook)
    assert calls == [1]


def test_nan_loss_stops_the_run_as_diverged(small, monkeypatch):
    train, val = small
    monkeypatch.setattr(train_mod, "loss_fn", lambda name, pred, target: (pred - target).mean() * float("nan"))
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        fit(CFG, train, val)


def test_interrupted_fit_resumes_from_its_checkpoint(small, tmp_path):
    train, val = small
    cfg = TrainConfig(backbone="timm:resnet10t", image_size=32, epochs=3, batch_size=8, head_hidden=16)
    ckpt = tmp_path / "run.pt"

    def die_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, train, val, on_epoch_end=die_after_two, checkpoint=ckpt)
    assert ckpt.is_file()
    resumed_epochs = []
    resumed = fit(cfg, train, val, on_epoch_end=lambda e, r: resumed_epochs.append(e), checkpoint=ckpt)
    assert resumed_epochs == [3]  # epochs 1 and 2 came from the checkpoint
    # their training time is the interrupted run's, as it recorded them: a rerun's cost counts it
    assert resumed.restored_epochs == 2 and resumed.history[0]["epoch_time_s"] > 0
    assert resumed.restored_time_s == sum(h["epoch_time_s"] for h in resumed.history[:2])
    straight = fit(cfg, train, val)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in straight.history], rel=1e-4
    )
    with pytest.raises(BoneAgeError, match="another config"):
        fit(
            TrainConfig(backbone="timm:resnet10t", image_size=32, epochs=3, batch_size=4, head_hidden=16),
            train,
            val,
            checkpoint=ckpt,
        )


def test_a_finished_checkpoint_gives_back_its_predictions_and_a_truncated_one_is_retrained(small, tmp_path, caplog):
    train, val = small
    cfg = TrainConfig(backbone="timm:resnet10t", image_size=32, epochs=2, batch_size=8, head_hidden=16)
    ckpt = tmp_path / "run.pt"
    first = fit(cfg, train, val, checkpoint=ckpt, eval_each_epoch=False, eval_without_bn_reestimation=True)
    # the original project's own evaluation (running statistics from augmented batches) differs from the protocol's
    assert not np.allclose(first.pred_months, first.pred_months_without_bn_reestimation, atol=0.1)
    epochs = []
    again = fit(cfg, train, val, on_epoch_end=lambda e, r: epochs.append(e), checkpoint=ckpt)
    assert epochs == []  # nothing trained: the finished checkpoint holds its predictions
    assert again.restored_epochs == 2 and again.restored_time_s == sum(h["epoch_time_s"] for h in first.history)
    assert first.restored_epochs == 0 and first.restored_time_s == 0.0
    assert np.array_equal(again.pred_months, first.pred_months)
    assert np.array_equal(again.pred_months_without_bn_reestimation, first.pred_months_without_bn_reestimation)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])  # a copy cut short, a full disk
    retrained = fit(cfg, train, val, on_epoch_end=lambda e, r: epochs.append(e), checkpoint=ckpt)
    assert epochs == [1, 2] and "unreadable" in caplog.text and retrained.restored_epochs == 0
    assert np.allclose(retrained.pred_months, first.pred_months, atol=1e-3)  # the same seed, trained again


def test_batch_size_above_the_training_set_is_refused(small):
    train, val = small
    with pytest.raises(BoneAgeError, match="batch_size = 512 is above"):
        fit(TrainConfig(image_size=32, batch_size=512), train, val)


@pytest.mark.parametrize(
    "precision,device,capability,expected",
    [
        ("auto", "cpu", None, None),  # bf16 on a CPU without bf16 hardware is 2.5-3x slower
        ("auto", "cuda", (9, 0), torch.bfloat16),  # H100/H200
        ("auto", "cuda", (8, 0), torch.bfloat16),  # A100
        ("auto", "cuda", (7, 0), torch.float16),  # V100 only emulates bf16
        ("fp32", "cuda", (9, 0), None),
        ("bf16", "cuda", (7, 5), torch.bfloat16),  # asked for explicitly
        ("fp16", "cuda", (9, 0), torch.float16),
    ],
)
def test_autocast_dtype_follows_the_hardware(precision, device, capability, expected):
    assert device_mod.amp_dtype(precision, device, capability) == expected


def test_devices_resolve_with_their_index_so_tensors_compare_equal(monkeypatch):
    """Tensors on a GPU report cuda:0, never bare cuda; a device resolved without its index compared
    unequal, and resident images were then treated as host memory and pinned (a crash on CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert device_mod.resolve_device("cuda") == torch.device("cuda:0")
    assert device_mod.resolve_device("auto") == torch.device("cuda:0")
    assert device_mod.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # bare cuda is the current device, named
    assert device_mod.resolve_device("cuda") == torch.device("cuda", 1)
    assert device_mod.resolve_device("auto") == torch.device("cuda", 1)
    with pytest.raises(BoneAgeError, match="only 2 CUDA device"):
        device_mod.resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BoneAgeError, match="no CUDA device"):
        device_mod.resolve_device("cuda")


def test_images_go_to_the_gpu_only_within_this_processs_share_of_its_memory():
    gib = 2**30
    fit = device_mod.images_fit_on_device
    # 10 GiB free, a 0.4 GiB model with Adam state, 2 GiB of activations: about 6.8 GiB of room
    assert fit(6 * gib, 10 * gib, 0, int(0.4 * gib), 2 * gib, share=1.0)
    assert not fit(6 * gib, 10 * gib, 0, int(0.4 * gib), 2 * gib, share=0.5)  # two workers on this GPU
    assert fit(6 * gib, 8 * gib, 2 * gib, int(0.4 * gib), 2 * gib, share=1.0)  # its own cached blocks count as room
    assert not fit(8 * gib, 10 * gib, 0, int(0.4 * gib), 2 * gib, share=1.0)  # the splits count together


def test_data_placement_can_be_forced_and_a_cpu_always_holds_the_data():
    cfg = TrainConfig(data_placement="host")
    assert (
        device_mod.place_images(cfg, [], None, torch.device("cuda", 0), 1.0) == "host"
    )  # decided before CUDA is asked
    assert device_mod.place_images(TrainConfig(), [], None, torch.device("cpu"), 0.5) == "device"
    with pytest.raises(BoneAgeError, match="data_placement"):
        TrainConfig(data_placement="gpu")


def test_a_checkpoint_restores_onto_a_model_on_another_device(small, tmp_path):
    """Resuming on a GPU crashed: loading with map_location=<the model's device> also moved the random
    generator's state there, and Generator.set_state takes only a CPU byte tensor. The meta device
    stands in for a GPU here: the checkpoint is read on the CPU and each tensor placed by the module
    and optimizer that own it, the Adam step counters staying on the CPU."""
    import warnings

    from boneage_core.checkpoint import TrainingState, restore_checkpoint
    from boneage_core.models import build_model

    train, val = small
    ckpt = tmp_path / "run.pt"

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(CFG, train, val, on_epoch_end=stop, checkpoint=ckpt)
    model = build_model(CFG).to("meta")
    state = TrainingState(
        model, train_mod.make_optimizer(CFG, model), None, torch.amp.GradScaler("cuda", enabled=False),
        torch.Generator(),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta parameters is a no-op, and torch says so
        restored = restore_checkpoint(ckpt, CFG, state)
    assert len(restored.history) == 1
    steps = [s["step"] for s in state.optimizer.state_dict()["state"].values()]
    assert steps and all(s.device.type == "cpu" for s in steps)


def test_a_precision_the_cpu_cannot_give_is_a_warning_not_a_silent_fp32(caplog):
    device_mod._warn_precision.cache_clear()  # said once per process: start from none said
    with caplog.at_level(logging.WARNING, logger="boneage_core.device"):
        assert device_mod.autocast_dtype(TrainConfig(precision="bf16"), torch.device("cpu")) is None
        assert device_mod.autocast_dtype(TrainConfig(precision="bf16"), torch.device("cpu")) is None
        assert device_mod.autocast_dtype(TrainConfig(precision="fp32"), torch.device("cpu")) is None
    said = [r.getMessage() for r in caplog.records]
    assert said == ["train.precision = bf16 cannot be honoured on the cpu: it computes in fp32"]
