"""Task heads on GLIPv2's grounded text features (``VL_HEAD_REGISTRY``); importing registers ``VQAHead`` and
``GroundedVQAHead``."""
from .build import VL_HEAD_REGISTRY, build_vl_head
from .grounded_vqa_head import GroundedVQAHead
from .vqa_head import VQAHead, dense_answer_targets

__all__ = ["VL_HEAD_REGISTRY", "GroundedVQAHead", "VQAHead", "build_vl_head", "dense_answer_targets"]
