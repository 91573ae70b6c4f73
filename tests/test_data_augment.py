"""Batch augmentation presets (kornia) and Normalize, checked against written-out expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bvit_edge.data import AugmentConfig, Normalize, build_train_augment
from bvit_edge.errors import ConfigError, UsageError

torch.set_num_threads(1)


def _batch(b=6, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, s, s, generator=g)


@pytest.mark.parametrize("preset", ["deit", "light", "none"])
def test_presets_keep_shape_dtype_and_range(preset):
    aug = build_train_augment(AugmentConfig.preset(preset), 32)
    x = _batch()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("preset", ["deit", "light"])
def test_augmentation_follows_torch_global_seed(preset):
    aug = build_train_augment(AugmentConfig.preset(preset), 32)
    x = _batch()
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    torch.manual_seed(124)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_none_is_identity():
    x = _batch()
    assert torch.equal(build_train_augment(AugmentConfig.preset("none"), 32)(x), x)


def test_light_is_an_integer_shift_of_at_most_2_px_with_zero_fill_and_no_flip():
    aug = build_train_augment("light", 16)
    x = _batch(b=32, s=16, seed=1)
    torch.manual_seed(0)
    y = aug(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.allclose(padded[i, :, dy : dy + 16, dx : dx + 16], y[i], atol=1e-6)
        ]
        assert len(found) == 1, f"sample {i} is not a pure shift"
        shifts.add(found[0])
    assert len(shifts) > 3  # shifts vary across the batch


def test_deit_preset_fields_and_timm_colour_jitter_rule():
    cfg = AugmentConfig.preset("deit")
    assert cfg.scale == (0.08, 1.0) and cfg.hflip == 0.5 and cfg.rand_augment_n == 2
    assert cfg.rand_augment_m == 9.0 and cfg.color_jitter == 0.4 and cfg.reprob == 0.25
    assert not cfg.applies_color_jitter  # timm: colour jitter is off when RandAugment is on
    assert AugmentConfig.preset("deit", rand_augment_n=0).applies_color_jitter
    assert AugmentConfig.preset("deit", force_color_jitter=True).applies_color_jitter
    assert AugmentConfig.preset("light").hflip == 0.0
    aug = build_train_augment(AugmentConfig.preset("deit", rand_augment_n=0), 32)
    torch.manual_seed(0)
    y = aug(_batch())
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_config_round_trip_overrides_and_errors():
    cfg = AugmentConfig.preset("deit", reprob=0.0, scale=(0.5, 1.0))
    d = cfg.to_dict()
    assert d["type"] == "AugmentConfig" and d["version"] == 1 and d["scale"] == [0.5, 1.0]
    import json

    assert AugmentConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ConfigError, match="deit, light, none"):
        AugmentConfig.preset("heavy")
    with pytest.raises(ConfigError, match="bogus"):
        AugmentConfig.preset("deit", bogus=1)
    with pytest.raises(ConfigError, match="hflip"):
        AugmentConfig.preset("light", hflip=2.0)
    with pytest.raises(ConfigError, match=r"\[B, 3, 32, 32\]"):
        build_train_augment("light", 32)(torch.rand(3, 32, 32))


def test_random_erasing_only_changes_a_rectangle():
    aug = build_train_augment(AugmentConfig(name="erase", reprob=1.0), 32)
    x = torch.full((8, 3, 32, 32), 0.5)
    torch.manual_seed(0)
    y = aug(x)
    for i in range(8):
        changed = (y[i] != x[i]).any(0).numpy()
        rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
        assert len(rows) > 0
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.mean() > 0.95  # a filled rectangle (noise can equal 0.5 only by chance)
        assert 0.02 * 1024 * 0.5 <= box.size <= 1024 / 3 * 1.5


def test_normalize_matches_the_formula_on_images_and_batches():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    norm = Normalize(mean, std)
    x = _batch(b=2, s=4)
    ref = (x.numpy() - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    np.testing.assert_allclose(norm(x).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(norm(x[0]).numpy(), ref[0], rtol=1e-6)
    assert len(norm.state_dict()) == 0
    with pytest.raises(UsageError):
        Normalize((0.1, 0.2), (1.0, 1.0, 1.0))
    with pytest.raises(UsageError):
        Normalize((0.1,), (0.0,))
    with pytest.raises(UsageError):
        norm(torch.rand(2, 1, 4, 4))


def test_rand_augment_draws_ops_per_image_by_default():
    # identical images, no crop / flip / erasing: with ops drawn per image the outputs differ between images;
    # with one draw for the whole batch (chunk = batch) the magnitude is fixed, so they would all be equal.
    x = _batch(b=1, s=16).repeat(8, 1, 1, 1)
    per_image = build_train_augment(AugmentConfig(name="ra", rand_augment_n=2), 16)
    torch.manual_seed(0)
    y = per_image(x)
    assert len({y[i].numpy().tobytes() for i in range(8)}) > 1
    shared = build_train_augment(AugmentConfig(name="ra", rand_augment_n=2, rand_augment_chunk=8), 16)
    torch.manual_seed(0)
    z = shared(x)
    assert z.shape == x.shape and float(z.min()) >= 0 and float(z.max()) <= 1
