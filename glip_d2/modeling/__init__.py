"""GLIP's models; see docs/CONTRACTS.md.

Importing this package registers the GLIP meta-architecture, the GLIP backbones (BACKBONE_REGISTRY), the language
encoders (LANGUAGE_ENCODER_REGISTRY), the fusion modules (FUSION_REGISTRY) and the grounding ROI heads.
"""
from . import backbone, dyhead, fusion, language, meta_arch, roi_heads  # noqa: F401  (registry side effects)
from .meta_arch import GLIP

__all__ = ["GLIP"]
