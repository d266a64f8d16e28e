"""boneage_core.augment and boneage_core.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneage_core.augment import augment_batch, normalize
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
