"""The built-in digits data set: real sklearn images, a fixed stratified 1,437 / 360 split, per_class subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from bvit_edge.data import list_datasets, load_dataset
from bvit_edge.errors import DataError, UsageError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def raw():
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(int)


@pytest.fixture(scope="module")
def native():
    return load_dataset("digits", image_size=8)


def _stack(ds):
    return np.stack([ds[i][0].numpy() for i in range(len(ds))]), np.array([ds[i][1] for i in range(len(ds))])


def test_digits_split_sizes_classes_and_types(native):
    info = native.info
    assert (len(native.train), len(native.val)) == (1437, 360)
    assert (info.num_train, info.num_val) == (1437, 360)
    assert info.classes == [str(i) for i in range(10)]
    assert info.default_augment == "light" and info.root is None and info.skipped_bad == 0
    x, y = native.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and isinstance(y, int)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_digits_pixels_and_labels_are_the_sklearn_images_over_16(native, raw):
    images, target = raw
    lookup = {images[i].tobytes(): target[i] for i in range(len(target))}
    for ds in (native.train, native.val):
        for i in range(0, len(ds), 7):
            x, y = ds[i]
            x = x.numpy()
            assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])  # grey replicated
            assert lookup[x[0].astype(np.float32).tobytes()] == y


def test_digits_split_is_stratified_a_partition_and_fixed(native, raw):
    _, target = raw
    _, ytr = _stack(native.train)
    _, yva = _stack(native.val)
    totals = np.bincount(target, minlength=10)
    assert np.array_equal(np.bincount(ytr, minlength=10) + np.bincount(yva, minlength=10), totals)
    val_counts = np.bincount(yva, minlength=10)
    expect = 360 * totals / totals.sum()
    assert np.all(val_counts >= np.floor(expect)) and np.all(val_counts <= np.ceil(expect))
    assert np.all(np.bincount(ytr, minlength=10) > 0) and np.all(val_counts > 0)
    xva, _ = _stack(native.val)
    for seed in (0, 7):  # the training seed does not move the split
        again = load_dataset("digits", image_size=8, seed=seed)
        xva2, yva2 = _stack(again.val)
        assert np.array_equal(xva, xva2) and np.array_equal(yva, yva2)


def test_digits_resize_matches_pillow_bilinear_and_stats_match_train_split(native):
    big = load_dataset("digits", image_size=32)
    for i in (0, 100, 359):
        small = native.val[i][0].numpy()[0]
        ref = np.asarray(Image.fromarray(small, mode="F").resize((32, 32), Image.BILINEAR)).clip(0, 1)
        got = big.val[i][0].numpy()
        assert got.shape == (3, 32, 32)
        np.testing.assert_allclose(got[0], ref, atol=1e-5)
    xtr, _ = _stack(big.train)
    np.testing.assert_allclose(big.info.mean, [xtr.mean()] * 3, rtol=1e-5)
    np.testing.assert_allclose(big.info.std, [xtr.std()] * 3, rtol=1e-4)


def test_digits_per_class_keeps_n_per_class_deterministically_and_val_untouched(native):
    a = load_dataset("digits", image_size=8, per_class=5, seed=3)
    b = load_dataset("digits", image_size=8, per_class=5, seed=3)
    c = load_dataset("digits", image_size=8, per_class=5, seed=4)
    xa, ya = _stack(a.train)
    xb, yb = _stack(b.train)
    xc, _ = _stack(c.train)
    assert len(a.train) == 50 and a.info.num_train == 50 and a.info.per_class == 5
    assert np.array_equal(np.bincount(ya, minlength=10), [5] * 10)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(xa, xc)
    assert len(a.val) == 360 and np.array_equal(_stack(a.val)[0], _stack(native.val)[0])
    # a smaller subset is contained in a larger one drawn with the same seed
    big, _ = _stack(load_dataset("digits", image_size=8, per_class=9, seed=3).train)
    big_set = {x.tobytes() for x in big}
    assert all(x.tobytes() in big_set for x in xa)


def test_digits_per_class_too_large_names_the_class_and_count(native):
    _, ytr = _stack(native.train)
    counts = np.bincount(ytr, minlength=10)
    with pytest.raises(DataError) as e:
        load_dataset("digits", image_size=8, per_class=int(counts.max()) + 1)
    smallest = int(np.argmin(counts))
    assert f"'{smallest}' has {counts[smallest]}" in str(e.value)


def test_unknown_or_missing_name_lists_known_data_sets():
    with pytest.raises(DataError) as e:
        load_dataset("imagenet22k")
    for n in ("digits", "cifar100", "imagefolder", "flowers102", "chaoyang"):
        assert n in str(e.value) and n in list_datasets()
    with pytest.raises(DataError):
        load_dataset("")
    with pytest.raises(UsageError):
        load_dataset("digits", image_size=0)
    with pytest.raises(UsageError):
        load_dataset("digits", per_class=0)


def test_info_to_dict_is_json(native):
    import json

    d = json.loads(json.dumps(native.info.to_dict()))
    assert d["name"] == "digits" and len(d["mean"]) == 3 and d["num_val"] == 360


def test_splits_work_with_a_dataloader_and_expose_targets(native):
    from torch.utils.data import DataLoader

    x, y = next(iter(DataLoader(native.val, batch_size=16, shuffle=False)))
    assert x.shape == (16, 3, 8, 8) and y.dtype == torch.int64
    assert native.val.targets[:16] == y.tolist()
    assert native.train.targets == [native.train[i][1] for i in range(len(native.train))]
