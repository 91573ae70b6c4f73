"""The whole gsb_demo_patch4_32 model (stage 2, briefly trained, frozen) along torch frozen -> packed export
in onnxruntime (bvit_edge Python ops) -> standard export in onnxruntime, on the 360 digits validation images.

* packed-ORT and standard-ORT agree bit for bit (same float kernels; the binary parts are exact integers);
* torch vs ORT: identical top-1 on every image, and max |diff| <= 1e-5 x max |logit| on every image except
  binarization ties: an image may differ only if one of its binary-linear inputs lies within 1e-6 of the
  binarizer threshold, where torch's and onnxruntime's float LayerNorm / softmax / GELU (last-bit
  differences) legitimately pick different bits. At most 1% of the images may be such ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bvit_edge.models.gsb  # noqa: F401 - registers the GSB students
from bvit_edge.export import export_onnx, validate_onnx
from bvit_edge.export.storage import apply_to_model
from bvit_edge.models import create_model
from bvit_edge.quant.deploy import FrozenBinaryLinear
from bvit_edge.runtime.ort import ort_run


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, val images), normalised, [N, 3, 32, 32]."""
    from bvit_edge.data import Normalize, load_dataset

    splits = load_dataset("digits", image_size=32)
    norm = Normalize(splits.info.mean, splits.info.std)
    tr = [splits.train[i] for i in range(len(splits.train))]
    xt = norm(torch.stack([t[0] for t in tr]))
    yt = torch.tensor([int(t[1]) for t in tr])
    xv = norm(torch.stack([splits.val[i][0] for i in range(len(splits.val))]))
    return xt, yt, xv


def _torch_logits_and_tie_distance(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and per image the smallest distance of any binary-linear input x' to its threshold
    (|x'| for signed, |x' - alpha/2| for unsigned) — written out here, not taken from the code under test."""
    closest: list[torch.Tensor] = []

    def pre_hook(mod, args):
        xs = args[0] + mod.shift
        d = xs.abs() if mod.mode == "signed" else (xs - mod.alpha / 2).abs()
        closest.append(d.flatten(1).min(dim=1).values)

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, FrozenBinaryLinear)]
    try:
        with torch.no_grad():
            logits = model(x).numpy()
    finally:
        for h in handles:
            h.remove()
    return logits, torch.stack(closest).min(dim=0).values.numpy()


@pytest.mark.slow
def test_gsb_demo_torch_packed_standard_agree_on_digits_val(tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xt, yt, xv = _digits()
    assert xv.shape[0] == 360
    model = create_model("gsb_demo_patch4_32")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):  # brief training so the logits carry signal (not a converged model)
        idx = torch.randint(0, xt.shape[0], (64,))
        out = model(xt[idx])
        heads = out if isinstance(out, tuple) else (out,)
        loss = sum(torch.nn.functional.cross_entropy(h, yt[idx]) for h in heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.freeze()
    x = xv.numpy()
    packed = export_onnx(model, tmp_path / "gsb_demo_packed.onnx", ops="packed")
    standard = export_onnx(model, tmp_path / "gsb_demo_standard.onnx", ops="standard")
    # the files store B compactly (int8 by default): the reference is the model with B decoded from it
    assert set(packed.encoded) == set(standard.encoded) and packed.encoded
    model = apply_to_model(model, packed.encoded)
    ref, tie = _torch_logits_and_tie_distance(model, xv)
    assert len(np.unique(ref.argmax(1))) > 1, "a degenerate model would make top-1 agreement trivial"
    yp = ort_run(packed.path, x, threads=2, batch_size=120)[0]
    ys = ort_run(standard.path, x, threads=2, batch_size=120)[0]

    np.testing.assert_array_equal(yp, ys)  # packed (popcount) and standard (float MatMul) paths: bit for bit
    np.testing.assert_array_equal(yp.argmax(1), ref.argmax(1))  # identical top-1 on all 360 images

    scale = np.abs(ref).max()
    per_image = np.abs(ys.astype(np.float64) - ref).max(axis=1)
    outliers = np.flatnonzero(per_image > 1e-5 * scale)
    assert len(outliers) <= 3, f"{len(outliers)} images beyond 1e-5 relative: {outliers.tolist()}"
    assert np.all(tie[outliers] < 1e-6), f"outliers {outliers.tolist()} are not binarization ties: {tie[outliers]}"
    rest = np.delete(per_image, outliers)
    assert rest.max() <= 1e-5 * scale

    rep = validate_onnx(model, standard.path, x, rtol=1e-5, threads=2, batch_size=120, max_outliers=3)
    assert rep.passed and rep.top1_mismatches == 0 and rep.inputs_beyond_tolerance == len(outliers)
