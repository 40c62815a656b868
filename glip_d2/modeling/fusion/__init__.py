"""Image<->text fusion modules (registered in FUSION_REGISTRY on import) and the extra BERT layer."""
from .bert_layer import ClampedBertLayer
from .bi_attention import BiAttentionFusion, BiMultiHeadAttention
from .build import FUSION_REGISTRY, build_fusion, register_fusion

__all__ = [
    "FUSION_REGISTRY",
    "BiAttentionFusion",
    "BiMultiHeadAttention",
    "ClampedBertLayer",
    "build_fusion",
    "register_fusion",
]
