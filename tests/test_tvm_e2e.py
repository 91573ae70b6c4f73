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
