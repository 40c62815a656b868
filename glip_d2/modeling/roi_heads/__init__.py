"""Two-stage grounding ROI heads: region-word alignment box predictor and the language-aware mask head.

Importing registers ``GroundingROIHeads`` in detectron2's ROI_HEADS_REGISTRY.
"""
from .alignment import RegionTokenAlignment
from .box_predictor import GroundingFastRCNNOutputLayers, token_targets
from .grounding_roi_heads import GroundingROIHeads
from .mask_head import LanguageAwareMaskHead, phrase_mask_logits

__all__ = [
    "GroundingFastRCNNOutputLayers",
    "GroundingROIHeads",
    "LanguageAwareMaskHead",
    "RegionTokenAlignment",
    "phrase_mask_logits",
    "token_targets",
]
