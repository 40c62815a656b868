"""GLIPv2's two extra pre-training objectives as standalone blocks: the inter-image region-word contrastive
loss and masked language modelling on the fused text features. The meta-architecture wires them in."""
from .mlm import IGNORE_INDEX, LMPredictionHead, mask_tokens, masked_token_accuracy, mlm_loss
from .region_word_contrastive import (
    RegionWordAnchors,
    RegionWordContrastiveLoss,
    all_gather_cat,
    flatten_anchor_features,
    region_inputs_from_anchors,
    select_region_word_anchors,
)

__all__ = [
    "IGNORE_INDEX",
    "LMPredictionHead",
    "RegionWordAnchors",
    "RegionWordContrastiveLoss",
    "all_gather_cat",
    "flatten_anchor_features",
    "mask_tokens",
    "masked_token_accuracy",
    "mlm_loss",
    "region_inputs_from_anchors",
    "select_region_word_anchors",
]
