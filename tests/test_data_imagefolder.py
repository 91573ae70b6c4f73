"""ImageFolder / flowers102 from real PNG and JPEG files: labels, resizing as DeiT does it, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bvit_edge.data import load_dataset
from bvit_edge.errors import DataError

torch.set_num_threads(1)
CLASSES = ["daisy", "rose", "tulip"]


def _img(rng, h, w):
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _make(root, per_class=3, val_per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                a = _img(rng, h, w)
                p = d / f"{k}.png"
                Image.fromarray(a).save(p)
                arrays[p] = a
            (d / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return arrays


def _pil_resize(a_float_hwc, size_wh, resample):
    chans = [np.asarray(Image.fromarray(a_float_hwc[..., c], mode="F").resize(size_wh, resample)) for c in range(3)]
    return np.stack(chans).clip(0, 1)


def test_imagefolder_classes_labels_shapes(tmp_path):
    _make(tmp_path)
    s = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert s.info.classes == CLASSES and s.info.num_train == 9 and s.info.num_val == 6
    assert s.info.mean == (0.485, 0.456, 0.406) and s.info.default_augment == "deit"
    for ds in (s.train, s.val):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
            assert CLASSES[y] == ds.samples[i][0].parent.name
    assert load_dataset("flowers102", root=tmp_path, image_size=16).info.name == "flowers102"


def test_train_resize_and_eval_resize_centre_crop_match_pillow_and_numpy(tmp_path):
    arrays = _make(tmp_path)
    S, crop_pct = 16, 0.875
    s = load_dataset("imagefolder", root=tmp_path, image_size=S)  # bicubic, crop_pct 0.875 by default
    assert s.info.interpolation == "bicubic" and s.info.crop_pct == crop_pct
    for i in range(len(s.train)):
        a = arrays[s.train.samples[i][0]].astype(np.float32) / 255.0
        np.testing.assert_allclose(s.train[i][0].numpy(), _pil_resize(a, (S, S), Image.BICUBIC), atol=1e-5)
    for i in range(len(s.val)):
        a = arrays[s.val.samples[i][0]].astype(np.float32) / 255.0
        h, w = a.shape[:2]
        short = math.floor(S / crop_pct)  # 18: "resize 256, crop 224" scaled down
        nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        big = _pil_resize(a, (nw, nh), Image.BICUBIC)
        top, left = round((nh - S) / 2), round((nw - S) / 2)
        np.testing.assert_allclose(s.val[i][0].numpy(), big[:, top : top + S, left : left + S], atol=1e-5)
    s2 = load_dataset("imagefolder", root=tmp_path, image_size=S, crop_pct=1.0, interpolation="bilinear")
    a = arrays[s2.val.samples[0][0]].astype(np.float32) / 255.0
    h, w = a.shape[:2]
    nh, nw = (S, int(S * w / h)) if h <= w else (int(S * h / w), S)
    big = _pil_resize(a, (nw, nh), Image.BILINEAR)
    top, left = round((nh - S) / 2), round((nw - S) / 2)
    np.testing.assert_allclose(s2.val[0][0].numpy(), big[:, top : top + S, left : left + S], atol=1e-5)


def test_jpeg_and_grey_and_rgba_files_decode_to_rgb(tmp_path):
    _make(tmp_path)
    rng = np.random.default_rng(1)
    Image.fromarray(_img(rng, 24, 24)).save(tmp_path / "train" / "rose" / "x.jpg", quality=95)
    Image.fromarray(_img(rng, 24, 24)[..., 0]).save(tmp_path / "train" / "rose" / "grey.png")
    Image.fromarray(np.dstack([_img(rng, 24, 24), np.full((24, 24), 255, np.uint8)])).save(
        tmp_path / "train" / "rose" / "rgba.png"
    )
    s = load_dataset("imagefolder", root=tmp_path, image_size=24)
    got = {p.name: s.train[i][0] for i, (p, _) in enumerate(s.train.samples)}
    grey = got["grey.png"]
    assert grey.shape == (3, 24, 24) and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    ref = np.asarray(Image.open(tmp_path / "train" / "rose" / "x.jpg").convert("RGB")).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(got["x.jpg"].numpy(), ref, atol=1e-6)
    assert got["rgba.png"].shape == (3, 24, 24)


def test_per_class_subsets_train_only(tmp_path):
    _make(tmp_path, per_class=4)
    s = load_dataset("imagefolder", root=tmp_path, image_size=8, per_class=2, seed=5)
    assert np.array_equal(np.bincount(s.train.targets, minlength=3), [2, 2, 2]) and len(s.val) == 6
    again = load_dataset("imagefolder", root=tmp_path, image_size=8, per_class=2, seed=5)
    assert [p for p, _ in s.train.samples] == [p for p, _ in again.train.samples]
    with pytest.raises(DataError, match="'daisy' has 4"):
        load_dataset("imagefolder", root=tmp_path, per_class=5)


def test_missing_root_subfolder_empty_class_and_unknown_val_class(tmp_path):
    with pytest.raises(DataError, match="needs a root"):
        load_dataset("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("flowers102", root=tmp_path / "missing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no val/ folder"):
        load_dataset("imagefolder", root=tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", root=tmp_path)
    assert str(tmp_path / "train" / "a") in str(e.value) and "no image files" in str(e.value)
    root = tmp_path / "r2"
    _make(root)
    (root / "val" / "lily").mkdir()
    Image.fromarray(_img(np.random.default_rng(0), 8, 8)).save(root / "val" / "lily" / "0.png")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", root=root)
    assert str(root / "val" / "lily") in str(e.value)


def test_corrupt_images_fail_naming_the_file_or_are_counted_with_skip_bad(tmp_path):
    _make(tmp_path)
    rng = np.random.default_rng(2)
    garbage = tmp_path / "train" / "rose" / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    full = tmp_path / "train" / "tulip" / "full.jpg"
    Image.fromarray(_img(rng, 40, 40)).save(full, quality=90)
    cut = tmp_path / "val" / "tulip" / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:-200])  # truncated JPEG: header fine, data short
    png = tmp_path / "val" / "daisy" / "cut.png"
    Image.fromarray(_img(rng, 40, 40)).save(png)
    png.write_bytes(png.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", root=tmp_path, image_size=8)
    assert str(garbage) in str(e.value) and "skip_bad" in str(e.value)
    s = load_dataset("imagefolder", root=tmp_path, image_size=8, skip_bad=True)
    assert s.info.skipped_bad == 3
    assert sorted(s.info.skipped_files) == sorted(str(p) for p in (garbage, cut, png))
    assert s.info.num_train == 9 + 1 and s.info.num_val == 6  # full.jpg kept; the three bad files left out
    assert all(str(p) not in s.info.skipped_files for p, _ in s.train.samples + s.val.samples)


def test_a_class_left_empty_by_skip_bad_is_an_error(tmp_path):
    _make(tmp_path, per_class=1)
    for p in (tmp_path / "train" / "rose").glob("*.png"):
        p.write_bytes(b"broken")
    with pytest.raises(DataError, match="'rose'"):
        load_dataset("imagefolder", root=tmp_path, skip_bad=True)
