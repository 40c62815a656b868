"""ResNet (detectron2's, from MODEL.RESNETS.*) + GLIP FPN: a small, fast stand-in for Swin in CPU configs.

Not an official GLIP variant; it exists so that tests, demos and quick schedules can run the full GLIP
pipeline with e.g. ResNet-18 (MODEL.RESNETS.DEPTH 18, RES2_OUT_CHANNELS 64, OUT_FEATURES res3..res5).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .fpn import GLIPFPN

__all__ = ["build_resnet_glip_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_glip_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """detectron2 ResNet whose MODEL.RESNETS.OUT_FEATURES (strides 8, 16, 32) feed the GLIP FPN -> p3..p7."""
    in_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    if len(in_features) != 3:
        raise ValueError(
            "build_resnet_glip_fpn_backbone needs MODEL.RESNETS.OUT_FEATURES = three stages with strides "
            f"8, 16, 32 (e.g. ['res3', 'res4', 'res5']); got {in_features}"
        )
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return GLIPFPN(cfg, bottom_up=bottom_up, in_features=in_features)
