"""CIFAR-100 from tiny pickles written exactly like the official python batches (bytes keys, protocol 2)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bvit_edge.data import load_dataset
from bvit_edge.errors import DataError

torch.set_num_threads(1)
NAMES = [f"class_{i:02d}" for i in range(100)]


def _write(folder, n_train_per_class=3, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ytr = np.repeat(np.arange(100), n_train_per_class)
    rng.shuffle(ytr)
    xtr = rng.integers(0, 256, size=(len(ytr), 3072), dtype=np.uint8)
    yte = rng.integers(0, 100, size=n_test)
    xte = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        d = {
            b"filenames": [b"x.png"] * len(y),
            b"batch_label": b"b",
            b"fine_labels": [int(v) for v in y],
            b"coarse_labels": [int(v) // 5 for v in y],
            b"data": x,
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in NAMES], b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return xtr, ytr, xte, yte


def test_cifar_pixels_are_chw_row_major_labels_and_classes(tmp_path):
    xtr, ytr, xte, yte = _write(tmp_path)
    s = load_dataset("cifar100", root=tmp_path, image_size=32)
    assert s.info.classes == NAMES and (s.info.num_train, s.info.num_val) == (300, 20)
    assert s.info.mean == (0.5071, 0.4865, 0.4409) and s.info.std == (0.2673, 0.2564, 0.2762)
    assert s.info.default_augment == "deit"
    for ds, x, y in ((s.train, xtr, ytr), (s.val, xte, yte)):
        for n in (0, 5, len(y) - 1):
            img, label = ds[n]
            assert img.dtype == torch.float32 and img.shape == (3, 32, 32) and label == y[n]
            c, h, w = 2, 7, 30
            assert img[c, h, w].item() == pytest.approx(x[n, c * 1024 + h * 32 + w] / 255.0, abs=1e-7)
            np.testing.assert_allclose(img.numpy().reshape(-1), x[n] / 255.0, atol=1e-7)


def test_cifar_accepts_the_cifar_100_python_subfolder_and_resizes(tmp_path):
    xtr, _, _, _ = _write(tmp_path / "cifar-100-python")
    s = load_dataset("cifar100", root=tmp_path, image_size=40)
    x, _ = s.train[0]
    assert x.shape == (3, 40, 40) and x.min() >= 0 and x.max() <= 1
    assert s.info.interpolation == "bicubic"
    src = xtr[0].reshape(3, 32, 32).astype(np.float32) / 255.0
    ref = np.stack([np.asarray(Image.fromarray(src[c], mode="F").resize((40, 40), Image.BICUBIC)) for c in range(3)])
    np.testing.assert_allclose(x.numpy(), ref.clip(0, 1), atol=1e-5)
    assert s.val[0][0].shape == (3, 40, 40)
    assert s.info.root.endswith("cifar-100-python") and s.info.crop_pct == 0.875


def test_cifar_per_class_and_val_untouched(tmp_path):
    _write(tmp_path)
    s = load_dataset("cifar100", root=tmp_path, image_size=32, per_class=2, seed=1)
    labels = [s.train[i][1] for i in range(len(s.train))]
    assert np.array_equal(np.bincount(labels, minlength=100), [2] * 100) and len(s.val) == 20
    with pytest.raises(DataError, match="'class_00' has 3"):
        load_dataset("cifar100", root=tmp_path, per_class=4)


def test_cifar_missing_root_or_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="needs a root"):
        load_dataset("cifar100")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar100", root=tmp_path / "nope")
    _write(tmp_path)
    (tmp_path / "meta").unlink()
    with pytest.raises(DataError, match="lacks meta"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar_truncated_pickle_names_the_file(tmp_path):
    _write(tmp_path)
    blob = (tmp_path / "train").read_bytes()
    (tmp_path / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", root=tmp_path)
    assert str(tmp_path / "train") in str(e.value) and "truncated" in str(e.value)


def test_cifar_malformed_batches_are_data_errors(tmp_path):
    _write(tmp_path)
    d = {b"data": np.zeros((4, 100), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    (tmp_path / "test").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DataError, match="N x 3072 uint8"):
        load_dataset("cifar100", root=tmp_path)
    d = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}
    (tmp_path / "test").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DataError, match="label 100 at entry 1"):
        load_dataset("cifar100", root=tmp_path)
    (tmp_path / "test").write_bytes(pickle.dumps({"data": 1}, protocol=2))
    with pytest.raises(DataError, match="fine_labels"):
        load_dataset("cifar100", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    _write(tmp_path)
    (tmp_path / "meta").write_bytes(pickle.dumps({b"fine_label_names": [_Evil()]}, protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar_protocol_5_pickles_also_load(tmp_path):
    xtr, _, _, _ = _write(tmp_path)
    d = pickle.loads((tmp_path / "train").read_bytes(), encoding="bytes")
    (tmp_path / "train").write_bytes(pickle.dumps(d, protocol=5))
    s = load_dataset("cifar100", root=tmp_path)
    np.testing.assert_allclose(s.train[3][0].numpy().reshape(-1), xtr[3] / 255.0, atol=1e-7)
