"""Visual backbones: Swin (official GLIP layout), detectron2's ResNet or torchvision's MobileNetV2, each under
GLIP's FPN (p3..p7).

Importing registers ``build_swin_glip_fpn_backbone``, ``build_resnet_glip_fpn_backbone`` and
``build_mobilenet_v2_glip_fpn_backbone`` in BACKBONE_REGISTRY.
"""
from .fpn import GLIPFPN, DropBlock2D, LastLevelP6P7
from .mobilenet import MobileNetV2Trunk, build_mobilenet_v2_glip_fpn_backbone
from .resnet import build_resnet_glip_fpn_backbone
from .swin import SwinTransformer, build_swin_glip_fpn_backbone

__all__ = [
    "GLIPFPN",
    "DropBlock2D",
    "LastLevelP6P7",
    "MobileNetV2Trunk",
    "SwinTransformer",
    "build_mobilenet_v2_glip_fpn_backbone",
    "build_resnet_glip_fpn_backbone",
    "build_swin_glip_fpn_backbone",
]
