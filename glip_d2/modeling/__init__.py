"""GLIP's models (see docs/architecture.md for the data flow).

Importing this package registers the meta-architectures (GLIP, GroundingRCNN), the GLIP backbones
(BACKBONE_REGISTRY), the language encoders (LANGUAGE_ENCODER_REGISTRY), the fusion modules (FUSION_REGISTRY) and the
grounding ROI heads (ROI_HEADS_REGISTRY).
"""
from . import backbone, fusion, language, meta_arch, roi_heads  # noqa: F401  (registry side effects)
from .meta_arch import GLIP, GroundingRCNN

__all__ = ["GLIP", "GroundingRCNN"]
