"""Models: the full-precision DeiT teacher and the binary students, all in one registry."""

from bvit_edge.models import vit  # noqa: F401  (registers the teacher family)
from bvit_edge.models.registry import create_model, list_models, model_default_cfg, register_model

__all__ = ["create_model", "list_models", "model_default_cfg", "register_model"]
from bvit_edge.models import (
    acdbit,  # noqa: F401
    binaryvit,  # noqa: F401
    bit,  # noqa: F401
    gsb,  # noqa: F401
)
