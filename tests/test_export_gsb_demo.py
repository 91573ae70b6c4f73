"""The whole gsb_demo_patch4_32 model (stage 2, briefly trained, frozen) agrees along torch frozen ->
packed export in onnxruntime (bvit_edge Python ops) -> standard export in onnxruntime: max |diff| within
1e-5 of the logits' scale and identical top-1 on every image of the digits validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bvit_edge.models.gsb  # noqa: F401
from bvit_edge.export import export_onnx, validate_onnx
from bvit_edge.models import create_model
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


@pytest.mark.slow
def test_gsb_demo_torch_packed_standard_agree_on_digits_val(tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xt, yt, xv = _digits()
    model = create_model("gsb_demo_patch4_32")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(30):  # brief training so the logits carry signal (not a converged model)
        idx = torch.randint(0, xt.shape[0], (64,))
        out = model(xt[idx])
        heads = out if isinstance(out, tuple) else (out,)
        loss = sum(torch.nn.functional.cross_entropy(h, yt[idx]) for h in heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.freeze()
    x = xv.numpy()
    assert x.shape[0] == 360

    with torch.no_grad():
        ref = model(xv).numpy()
    assert len(np.unique(ref.argmax(1))) > 1, "a degenerate model would make top-1 agreement trivial"

    packed = export_onnx(model, tmp_path / "gsb_demo_packed.onnx", ops="packed")
    standard = export_onnx(model, tmp_path / "gsb_demo_standard.onnx", ops="standard")
    for res in (packed, standard):
        rep = validate_onnx(model, res.path, x, rtol=1e-5, threads=2, batch_size=120)
        assert rep.passed and rep.top1_mismatches == 0 and rep.max_rel_diff <= 1e-5, rep
    # and the two ONNX paths against each other
    yp = ort_run(packed.path, x, threads=2, batch_size=120)[0]
    ys = ort_run(standard.path, x, threads=2, batch_size=120)[0]
    assert np.max(np.abs(yp - ys)) <= 1e-5 * np.max(np.abs(ys))
    np.testing.assert_array_equal(yp.argmax(1), ys.argmax(1))
    np.testing.assert_array_equal(yp.argmax(1), ref.argmax(1))
