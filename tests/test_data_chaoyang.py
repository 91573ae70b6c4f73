"""Chaoyang: train.json / test.json lists of {"name", "label"} plus the images they name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bvit_edge.data import load_dataset
from bvit_edge.errors import DataError

torch.set_num_threads(1)
CLASSES = ["normal", "serrated", "adenocarcinoma", "adenoma"]


def _make(root, n_train=2, n_test=1):
    rng = np.random.default_rng(0)
    lists = {}
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        entries = []
        for label in range(4):
            for k in range(n):
                name = f"{split}/{label}_{k}-IMG.JPG"
                Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(root / name, format="JPEG")
                entries.append({"name": name, "label": label})
        (root / f"{split}.json").write_text(json.dumps(entries))
        lists[split] = entries
    return lists


def test_chaoyang_labels_classes_and_shapes(tmp_path):
    lists = _make(tmp_path)
    s = load_dataset("chaoyang", root=tmp_path, image_size=16)
    assert s.info.classes == CLASSES and (s.info.num_train, s.info.num_val) == (8, 4)
    assert s.info.mean == (0.485, 0.456, 0.406) and s.info.default_augment == "deit"
    for ds, entries in ((s.train, lists["train"]), (s.val, lists["test"])):
        for i, e in enumerate(entries):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.min() >= 0 and x.max() <= 1
            assert y == e["label"] and ds.samples[i][0] == tmp_path / e["name"]


def test_chaoyang_per_class(tmp_path):
    _make(tmp_path, n_train=3)
    s = load_dataset("chaoyang", root=tmp_path, image_size=8, per_class=2, seed=0)
    assert np.array_equal(np.bincount(s.train.targets, minlength=4), [2, 2, 2, 2]) and len(s.val) == 4


def test_label_outside_class_list_names_the_json_file_and_entry(tmp_path):
    lists = _make(tmp_path)
    entries = lists["test"]
    entries[2]["label"] = 4
    (tmp_path / "test.json").write_text(json.dumps(entries))
    with pytest.raises(DataError) as e:
        load_dataset("chaoyang", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "test.json") in msg and "entry 2" in msg and entries[2]["name"] in msg


def test_malformed_or_missing_json_is_a_data_error(tmp_path):
    _make(tmp_path)
    (tmp_path / "train.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset("chaoyang", root=tmp_path)
    (tmp_path / "train.json").write_text(json.dumps([{"file": "x"}]))
    with pytest.raises(DataError, match="entry 0"):
        load_dataset("chaoyang", root=tmp_path)
    (tmp_path / "train.json").unlink()
    with pytest.raises(DataError, match=r"no train\.json"):
        load_dataset("chaoyang", root=tmp_path)


def test_missing_or_corrupt_image_fails_or_is_skipped_and_counted(tmp_path):
    lists = _make(tmp_path)
    missing = tmp_path / lists["train"][0]["name"]
    missing.unlink()
    corrupt = tmp_path / lists["test"][1]["name"]
    corrupt.write_bytes(corrupt.read_bytes()[:50])
    with pytest.raises(DataError) as e:
        load_dataset("chaoyang", root=tmp_path)
    assert str(missing) in str(e.value) and "file not found" in str(e.value)
    s = load_dataset("chaoyang", root=tmp_path, skip_bad=True, image_size=8)
    assert s.info.skipped_bad == 2 and set(s.info.skipped_files) == {str(missing), str(corrupt)}
    assert (s.info.num_train, s.info.num_val) == (7, 3)
