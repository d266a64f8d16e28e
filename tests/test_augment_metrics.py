"""boneage_core.augment and boneage_core.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boneage_core.augment import PIXEL_MEAN, PIXEL_STD, _draw, augmented_batch, normalize
from boneage_core.metrics import (
    bootstrap_ci,
    group_counts,
    paired_mae_difference,
    paired_seed_aware_difference,
    regression_metrics,
    seed_aware_mae,
    summarize_seeds,
    verdict,
)
from boneage_core.train import training_batches


def _batch() -> torch.Tensor:
    x = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 8:24, 12:20] = 200
    return x


def reference_augment(u8: torch.Tensor, strength: float, generator: torch.Generator, intensity: bool = True):
    """The plain composition the augmentation must equal, written out step by step from the original project's
    transforms: standardize, rotate/flip/shift/scale around the background value with torch's
    affine_grid and grid_sample, then contrast and brightness."""
    x = normalize(u8)
    if strength <= 0:
        return x
    b = x.shape[0]
    p = _draw(b, strength, generator)
    theta, contrast, brightness = p[:, :6].view(b, 2, 3), p[:, 6], p[:, 7]
    background = -PIXEL_MEAN / PIXEL_STD
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not intensity:
        return out + background
    return out * contrast.view(b, 1, 1, 1) + background + brightness.view(b, 1, 1, 1)


def test_strength_zero_is_the_identity():
    x = _batch()
    assert torch.equal(augmented_batch(x, 0.0, torch.Generator().manual_seed(0)), normalize(x))


def test_augmentation_is_seeded_and_grows_with_strength():
    x = _batch()
    a = augmented_batch(x, 0.5, torch.Generator().manual_seed(1))
    b = augmented_batch(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.float32
    weak = (augmented_batch(x, 0.1, torch.Generator().manual_seed(2)) - normalize(x)).abs().mean()
    strong = (augmented_batch(x, 1.0, torch.Generator().manual_seed(2)) - normalize(x)).abs().mean()
    assert 0 < weak < strong


@pytest.mark.parametrize("intensity", [True, False])
def test_what_training_feeds_the_model_is_the_plain_composition(intensity):
    """training_batches, the data path fit runs (a seeded order, then one augmented batch at a time),
    gives the same pixels as the plain composition on the same random stream, strength 0 included."""
    images = torch.randint(0, 256, (20, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for strength in (0.0, 0.4, 1.0):
        got = list(training_batches(images, 8, strength, torch.Generator().manual_seed(9), torch.device("cpu"),
                                    aug_intensity=intensity))  # fmt: skip
        g = torch.Generator().manual_seed(9)
        order = torch.randperm(20, generator=g)
        assert [idx.tolist() for idx, _ in got] == [order[:8].tolist(), order[8:16].tolist()]
        for idx, x in got:
            plain = reference_augment(images[idx].unsqueeze(1), strength, g, intensity=intensity)
            assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(x, plain, atol=1e-4)


def test_without_intensity_only_geometry_changes():
    """The baseline's augmentation: the same geometric draw, pixel values kept (air stays exactly air,
    the bone's level is not rescaled)."""
    x = _batch()
    with_jitter = augmented_batch(x, 1.0, torch.Generator().manual_seed(5))
    geometric = augmented_batch(x, 1.0, torch.Generator().manual_seed(5), intensity=False)
    air = normalize(torch.zeros(1, dtype=torch.uint8))
    assert torch.allclose(geometric[:, :, 0, 0], air.expand(4), atol=1e-5)
    assert geometric.max() <= normalize(torch.full((1,), 200, dtype=torch.uint8)).item() + 1e-4
    assert not torch.allclose(with_jitter, geometric, atol=1e-3)  # the jitter did change values
    assert not torch.allclose(geometric, normalize(x), atol=1e-3)  # the geometry still moved the hand


def test_background_stays_background_after_a_shift():
    x = _batch()
    out = augmented_batch(x, 1.0, torch.Generator().manual_seed(3))
    # zeros padded in by the affine map are dark film, within the brightness jitter of the original air
    assert (out[:, :, 0, 0] - normalize(x)[:, :, 0, 0]).abs().max() < 1.0


def test_metrics_in_months():
    true = np.array([12.0, 60.0, 120.0, 180.0])
    pred = np.array([18.0, 60.0, 100.0, 181.0])
    m = regression_metrics(pred, true, male=np.array([True, False, True, False]))
    assert m["mae_months"] == pytest.approx((6 + 0 + 20 + 1) / 4)
    assert m["bias_months"] == pytest.approx((6 + 0 - 20 + 1) / 4)
    assert m["rmse_months"] == pytest.approx(np.sqrt((36 + 0 + 400 + 1) / 4))
    assert m["within_6_months_pct"] == 75.0 and m["within_12_months_pct"] == 75.0
    assert m["mae_male_months"] == pytest.approx(13.0) and m["mae_female_months"] == pytest.approx(0.5)
    assert m["mae_0_24_months"] == 6.0 and m["mae_120_168_months"] == 20.0
    assert regression_metrics(true, true)["r2"] == 1.0


def recipe_predictions(true: np.ndarray, seed_maes: list[float], seed: int) -> np.ndarray:
    """(seeds, images) predictions whose per-seed MAE is exactly each of seed_maes."""
    rng = np.random.default_rng(seed)
    out = []
    for mae in seed_maes:
        err = np.abs(rng.normal(0, 1, len(true)))
        out.append(true + err / err.mean() * mae * rng.choice([-1, 1], len(true)))
    return np.array(out)


TRUE = np.random.default_rng(0).uniform(0, 228, 90)


def test_unsteady_seeds_make_the_paired_ci_include_zero_where_images_alone_would_not():
    """The demo's seeds: tuned 12.8, 12.9, 12.3 against the baseline's 11.6, 17.2, 17.9 months. An
    images-only bootstrap of seed-averaged errors calls the gain significant; resampling the seeds too
    shows that one lucky seed of the baseline beats the tuned one."""
    tuned, baseline = (
        recipe_predictions(TRUE, [12.8, 12.9, 12.3], 1),
        recipe_predictions(TRUE, [11.6, 17.2, 17.9], 2),
    )
    images_only = paired_mae_difference(np.abs(tuned - TRUE).mean(0), np.abs(baseline - TRUE).mean(0))
    assert images_only["ci_high"] < 0
    d = paired_seed_aware_difference(tuned, baseline, TRUE)
    assert d["mae_diff_months"] == pytest.approx(12.667 - 15.567, abs=1e-3)
    assert d["ci_low"] < 0 < d["ci_high"] and 0.025 < d["p_a_not_better"] < 0.5
    assert verdict(d) == "no significant difference"


def test_a_clear_gain_with_steady_seeds_excludes_zero():
    tuned, baseline = recipe_predictions(TRUE, [9.0, 9.2, 8.8], 3), recipe_predictions(TRUE, [12.1, 12.3, 11.9], 4)
    d = paired_seed_aware_difference(tuned, baseline, TRUE)
    assert d["ci_high"] < 0 and d["p_a_not_better"] < 0.025 and verdict(d) == "better"
    assert verdict(paired_seed_aware_difference(baseline, tuned, TRUE)) == "worse"


def test_one_seed_gives_no_verdict():
    d = paired_seed_aware_difference(recipe_predictions(TRUE, [5.0], 5), recipe_predictions(TRUE, [15.0], 6), TRUE)
    assert d["ci_high"] < 0 and verdict(d) == "undetermined"  # the CI cannot see the seed spread


def test_seed_aware_ci_is_wider_than_the_images_only_ci_when_seeds_disagree():
    unsteady = recipe_predictions(TRUE, [11.6, 17.2, 17.9], 2)
    r = seed_aware_mae(unsteady, TRUE)
    assert r["mean"] == pytest.approx(15.567, abs=1e-3) and r["sd"] == pytest.approx(np.std([11.6, 17.2, 17.9], ddof=1))
    lo, hi = bootstrap_ci(np.abs(unsteady - TRUE).mean(0))
    assert r["ci_low"] < lo and hi < r["ci_high"]
    assert r["ci_low"] < 11.6 + 0.5 and r["ci_high"] > 17.9 - 0.5  # the lucky and unlucky seed are both inside


def test_every_metric_is_a_mean_over_seeds_and_groups_count_their_images():
    preds = recipe_predictions(TRUE, [10.0, 14.0], 7)
    male = np.arange(90) % 3 == 0
    per_seed = [regression_metrics(p, TRUE, male) for p in preds]
    s = summarize_seeds(per_seed)
    assert s["mean"]["mae_months"] == pytest.approx(12.0) and s["sd"]["mae_months"] == pytest.approx(
        np.std([10, 14], ddof=1)
    )
    assert s["mean"]["rmse_months"] == pytest.approx(np.mean([m["rmse_months"] for m in per_seed]))
    assert s["mean"]["rmse_months"] >= s["mean"]["mae_months"]
    n = group_counts(TRUE, male)
    assert n["male"] + n["female"] == 90 and sum(v for k, v in n.items() if k not in ("male", "female")) == 90
    assert n["male"] == 30
