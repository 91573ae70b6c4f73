"""A real exported student (gsb_test_patch4_16: frozen, bvit_edge ops) compiled for the host agrees with
its PyTorch deployment forward: logits within 1e-4 and the same top-1, with and without fast math.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from bvit_edge.export.onnx_export import export_onnx
    from bvit_edge.models.registry import create_model
    from bvit_edge.quant.freeze import freeze

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("gsb_test_patch4_16")
    model.train()
    with torch.no_grad():  # lazy alpha initialisation from one batch
        model(torch.randn(4, *model.default_cfg["input_size"]))
    freeze(model)
    path = tmp_path_factory.mktemp("e2e") / "gsb_test.onnx"
    export_onnx(model, path)
    x = torch.randn(3, *model.default_cfg["input_size"])
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    return path, x.numpy(), ref


@pytest.mark.slow
@pytest.mark.parametrize("fast_math", [False, True])
def test_exported_gsb_student_matches_torch(tmp_path, exported, fast_math):
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model

    path, x, ref = exported
    art = compile_model(path, "host", tmp_path / "art", fast_math=fast_math)
    y = run_artifact(art, x, normalize=False)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert (y.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.slow
def test_compiled_student_matches_onnxruntime_on_the_digits_val_split(tmp_path):
    """The issue's contract on real data: a frozen GSB student of the demo geometry (32 px, patch 4), exported
    with packed bvit_edge ops, run by onnxruntime (our custom-op reference) and compiled for the host (default
    fast math), on all 360 digits val images: identical top-1, and logits within 1e-5 relative to the logit scale
    except where float rounding upstream (TVM's and onnxruntime's LayerNorm/softmax sum in different orders)
    puts an activation on the other side of a binarization threshold: one flipped bit moves a logit by a
    few 1e-3. On the demo's trained student that is 1 image of 360 (9e-3 on a logit scale of 7.3); here at
    most 1 % of the images may, and by at most 2 % of the scale."""
    from bvit_edge.export.onnx_export import export_onnx
    from bvit_edge.models.registry import create_model
    from bvit_edge.pipeline import val_inputs
    from bvit_edge.runtime.artifact import run_artifact
    from bvit_edge.runtime.compile import compile_model
    from bvit_edge.runtime.ort import ort_session, run_session

    torch.manual_seed(1)
    model = create_model("gsb_demo_patch4_32", num_classes=10)
    x, _ = val_inputs({"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "data": {"name": "digits"}})
    model.train()
    with torch.no_grad():  # lazy alphas from real images
        model(torch.from_numpy(x[:32]))
    model.freeze()
    path = tmp_path / "gsb_demo.onnx"
    export_onnx(model, path, ops="packed", input_shape=(1, 3, 32, 32))
    ref = run_session(ort_session(path, threads=1), x)[0]
    y = run_artifact(compile_model(path, "host", tmp_path / "art"), x, normalize=False)
    assert y.shape == ref.shape == (360, 10)
    scale = np.abs(ref).max()
    per_image = np.abs(y - ref).max(1) / scale
    assert (per_image <= 1e-5).mean() >= 0.99, np.sort(per_image)[-5:]
    assert per_image.max() <= 2e-2, per_image.max()
    assert (y.argmax(1) == ref.argmax(1)).all()
