"""Registered on import; see docs/CONTRACTS.md for what lives here.

Importing this package registers the GLIP meta-architecture, the GLIP backbones (BACKBONE_REGISTRY), the language
encoders (LANGUAGE_ENCODER_REGISTRY), the fusion modules (FUSION_REGISTRY) and the grounding ROI heads.
"""
from . import backbone, language, fusion, dyhead  # noqa: F401  (registry side effects)
from . import box_coder, anchor_generator, atss, losses, grounding_head, postprocess  # noqa: F401
from . import roi_heads  # noqa: F401
from . import meta_arch  # noqa: F401
from .meta_arch import GLIP

__all__ = ["GLIP"]
