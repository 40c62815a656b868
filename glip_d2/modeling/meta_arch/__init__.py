"""Meta-architectures (registered in detectron2's META_ARCH_REGISTRY): one-stage ``GLIP``, two-stage
``GroundingRCNN``, GLIPv2's VQA fine-tuning model ``GLIPv2VQA`` and its captioner ``GLIPv2Caption``."""
from .glip import GLIP
from .glipv2_caption import GLIPv2Caption
from .glipv2_vqa import GLIPv2VQA
from .grounding_rcnn import GroundingRCNN

__all__ = ["GLIP", "GLIPv2Caption", "GLIPv2VQA", "GroundingRCNN"]
