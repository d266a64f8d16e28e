"""boneage_core.augment and boneage_core.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boneage_core.augment import _draw, affine_grid, augment_batch, augmented_batch, normalize
from boneage_core.metrics import regression_metrics


def _batch() -> torch.Tensor:
    x = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 8:24, 12:20] = 200
    return normalize(x)


def test_strength_zero_is_the_identity():
    x = _batch()
    assert torch.equal(augment_batch(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_augmentation_is_seeded_and_grows_with_strength():
    x = _batch()
    a = augment_batch(x, 0.5, torch.Generator().manual_seed(1))
    b = augment_batch(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.float32
    weak = (augment_batch(x, 0.1, torch.Generator().manual_seed(2)) - x).abs().mean()
    strong = (augment_batch(x, 1.0, torch.Generator().manual_seed(2)) - x).abs().mean()
    assert 0 < weak < strong


def test_fused_uint8_path_equals_normalize_then_augment():
    """training_batches' fast path gives the same pixels as the plain composition, strength 0 included."""
    u8 = torch.randint(0, 256, (6, 1, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for strength in (0.0, 0.4, 1.0):
        fast = augmented_batch(u8, strength, torch.Generator().manual_seed(9))
        plain = augment_batch(normalize(u8), strength, torch.Generator().manual_seed(9))
        assert fast.dtype == torch.float32 and torch.allclose(fast, plain, atol=1e-4)


def test_broadcast_affine_grid_equals_torch_affine_grid():
    p = _draw(5, 1.0, torch.Generator().manual_seed(4))
    ref = F.affine_grid(torch.stack([p["row_x"], p["row_y"]], 1), [5, 1, 24, 30], align_corners=False)
    assert torch.allclose(affine_grid(p["row_x"], p["row_y"], 24, 30, torch.float32), ref, atol=1e-6)


def test_background_stays_background_after_a_shift():
    x = _batch()
    out = augment_batch(x, 1.0, torch.Generator().manual_seed(3))
    # zeros padded in by the affine map are dark film, within the brightness jitter of the original air
    assert (out[:, :, 0, 0] - x[:, :, 0, 0]).abs().max() < 1.0


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
