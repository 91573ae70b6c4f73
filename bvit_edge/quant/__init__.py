"""Quantizers, binary layers and deployment ops.

Importing :mod:`bvit_edge.quant.deploy` registers the ``torch.ops.bvit`` custom ops; this package imports it
so any frozen model can run after ``import bvit_edge.quant``.
"""

from bvit_edge.quant import deploy
from bvit_edge.quant.weights import BWNQuantizer, bwn_quantize, bwn_quantize_rows, bwn_scale

__all__ = ["BWNQuantizer", "bwn_quantize", "bwn_quantize_rows", "bwn_scale", "deploy"]
