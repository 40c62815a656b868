"""Parts of the two-stage grounding heads; ``glip_d2.modeling.roi_heads.GroundingROIHeads`` assembles them."""
from .alignment import RegionTokenAlignment
from .box_predictor import GroundingFastRCNNOutputLayers, token_targets
from .dense_proposals import dense_head_proposals, dense_objectness
from .mask_head import LanguageAwareMaskHead, phrase_mask_logits
from .rcnn import GroundingRCNN  # registers the two-stage meta-architecture

__all__ = [
    "GroundingFastRCNNOutputLayers",
    "GroundingRCNN",
    "LanguageAwareMaskHead",
    "RegionTokenAlignment",
    "dense_head_proposals",
    "dense_objectness",
    "phrase_mask_logits",
    "token_targets",
]
