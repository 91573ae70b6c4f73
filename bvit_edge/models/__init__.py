"""Models: the full-precision DeiT teacher and the binary students, all in one registry."""

from bvit_edge.models.registry import create_model, list_models, model_default_cfg, register_model
from bvit_edge.models import vit  # noqa: F401  (registers the teacher family)

__all__ = ["create_model", "list_models", "model_default_cfg", "register_model"]
from bvit_edge.models import bit  # noqa: F401
from bvit_edge.models import binaryvit  # noqa: F401
from bvit_edge.models import gsb  # noqa: F401
from bvit_edge.models import acdbit  # noqa: F401
