"""Small data structures: detections' phrases and GLIP's legacy "+1" box convention."""
from .legacy_boxes import continuous_to_legacy, legacy_clip, legacy_pairwise_iou, legacy_to_continuous
from .phrase_list import PhraseList

__all__ = ["PhraseList", "continuous_to_legacy", "legacy_clip", "legacy_pairwise_iou", "legacy_to_continuous"]
