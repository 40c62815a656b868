"""Visual backbones: Swin (official GLIP layout) or detectron2's ResNet, each under GLIP's FPN (p3..p7).

Importing registers ``build_swin_glip_fpn_backbone`` and ``build_resnet_glip_fpn_backbone`` in BACKBONE_REGISTRY.
"""
from .fpn import GLIPFPN, DropBlock2D, LastLevelP6P7
from .resnet import build_resnet_glip_fpn_backbone
from .swin import SwinTransformer, build_swin_glip_fpn_backbone

__all__ = [
    "GLIPFPN",
    "DropBlock2D",
    "LastLevelP6P7",
    "SwinTransformer",
    "build_resnet_glip_fpn_backbone",
    "build_swin_glip_fpn_backbone",
]
