"""Model summary (larq-style): counts checked against hand-computed numbers for the test geometry
(16x16 image, patch 4, dim 32, depth 2, 2 heads, MLP 128, 10 classes, 17 tokens)."""

from __future__ import annotations

import json

import pytest
import torch

from bvit_edge.errors import ConfigError
from bvit_edge.models import create_model, list_models
from bvit_edge.summary import summary

torch.set_num_threads(1)

N, D, H, DH, HID, C = 17, 32, 2, 16, 128, 10
PATCH_CONV = D * 3 * 4 * 4 + D  # 1568
TOKENS = 1 * D + N * D  # cls + pos = 576
TEACHER = (
    TOKENS
    + PATCH_CONV
    + 2 * (2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * HID + HID) + (HID * D + D))
    + 2 * D
    + (D * C + C)
)


def test_teacher_counts_by_hand():
    s = summary(create_model("deit_test_patch4_16"))
    assert TEACHER == 27946
    assert s.params_32bit == TEACHER and s.params_1bit == 0 and s.params_8bit == 0
    assert s.teacher_params == TEACHER
    assert s.packed_bytes == 4 * TEACHER
    per_block = N * D * 3 * D + N * D * D + N * D * HID + N * HID * D + 2 * H * N * N * DH
    assert s.total("float_macs") == 16 * D * 48 + 2 * per_block + D * C
    assert s.compression_ratio == pytest.approx(1.0)


def test_bit_student_counts_by_hand():
    s = summary(create_model("bit_test_patch4_16"))
    one_bit = 2 * (D * 3 * D + D * D + D * HID + HID * D)
    assert s.params_1bit == one_bit == 24576
    # float: tokens, patch conv, per block 2 LayerNorms + each linear's bias/alpha/beta + q/k/v (alpha + beta
    # [H,1,d_h]) + attention probabilities (alpha + beta [H,1,1]); final norm; head
    lin_float = (3 * D + 1 + D) + (D + 1 + D) + (HID + 1 + D) + (D + 1 + HID)
    attn_bin = 3 * (1 + H * DH) + (1 + H)
    float_params = TOKENS + PATCH_CONV + 2 * (2 * 2 * D + lin_float + attn_bin) + 2 * D + (D * C + C)
    assert s.params_32bit == float_params == 4030
    assert s.params_8bit == 0
    # packed: rows of K bits padded to 64 -> 8 bytes a word
    packed_1bit = 2 * (3 * D * 8 + D * 8 + HID * 8 + D * 2 * 8)
    assert s.packed_bytes == packed_1bit + 4 * float_params
    assert s.total("binary_macs") == 2 * (N * D * 3 * D + N * D * D + N * D * HID + N * HID * D + 2 * H * N * N * DH)
    assert s.total("float_macs") == 16 * D * 48 + D * C
    assert s.teacher_params == TEACHER
    assert s.compression_ratio == pytest.approx(4 * TEACHER / s.packed_bytes)


def test_frozen_model_has_the_same_binary_counts():
    m = create_model("bit_test_patch4_16")
    m(torch.randn(2, 3, 16, 16))
    before = summary(m)
    m.freeze()
    after = summary(m)
    assert after.params_1bit == before.params_1bit
    assert after.total("binary_macs") == before.total("binary_macs")


def test_summary_does_not_touch_the_model():
    m = create_model("bit_test_patch4_16")
    summary(m)
    assert not any(bool(b) for n, b in m.named_buffers() if n.endswith("initialized"))


def test_input_size_other_than_chw_is_a_config_error():
    m = create_model("bit_test_patch4_16")
    with pytest.raises(ConfigError, match=r"input_size must be \(C, H, W\)"):
        summary(m, input_size=(16, 16))  # type: ignore[arg-type]
    assert summary(m, input_size=[3, 16, 16]).input_size == (3, 16, 16)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(list_models("*test*")))
def test_summary_runs_on_every_test_variant(name: str):
    s = summary(create_model(name))
    d = s.to_dict()
    json.dumps(d)
    assert d["totals"]["params_total"] == s.params_total > 0
    assert s.to_text().count("Total") == 1
    if not name.startswith("deit"):
        assert s.params_1bit > 0 and s.compression_ratio > 1


def test_gsb_deit_small_binary_weights_and_packed_size():
    if "gsb_deit_small_patch16_224" not in list_models():
        pytest.skip("the GSB model is not registered")
    s = summary(create_model("gsb_deit_small_patch16_224"))
    print(s.to_text(max_rows=20))
    print(json.dumps({k: v for k, v in s.to_dict().items() if k != "layers"}, indent=1))
    assert s.params_1bit == 12 * (384 * 1152 + 384 * 384 + 384 * 1536 + 1536 * 384) == 21_233_664
    assert 22.0e6 < s.teacher_params < 22.6e6  # distilled DeiT-S, two heads
    assert s.teacher_bytes / 1e6 == pytest.approx(89.7, abs=0.5)
    assert s.compression_ratio > 5
