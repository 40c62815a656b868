"""Meta-architectures (registered in detectron2's META_ARCH_REGISTRY): one-stage ``GLIP`` and two-stage
``GroundingRCNN``."""
from .glip import GLIP
from .grounding_rcnn import GroundingRCNN

__all__ = ["GLIP", "GroundingRCNN"]
