"""GLIP's dense (one-stage) grounding head and everything around it: legacy anchors, ATSS assignment, the box
coder, the region-token head, its losses and post-processing."""
from .anchor_generator import GLIPAnchorGenerator, legacy_cell_anchors
from .atss import ATSSMatcher
from .box_coder import GLIPBoxCoder
from .grounding_head import GroundingHead, Scale
from .losses import GLIPLoss
from .postprocess import GLIPPostProcessor, legacy_batched_nms, token_to_label_scores

__all__ = [
    "ATSSMatcher",
    "GLIPAnchorGenerator",
    "GLIPBoxCoder",
    "GLIPLoss",
    "GLIPPostProcessor",
    "GroundingHead",
    "Scale",
    "legacy_batched_nms",
    "legacy_cell_anchors",
    "token_to_label_scores",
]
