"""GLIP's vision-language tower: NUM_CONVS blocks of image<->text fusion -> extra BERT layer -> DyConv.

Order inside a block matters for fidelity: fusion first, then the text side's extra BERT layer, then the visual
side's DyConv (official detail 14). GLIP-T(A) has no fusion and no extra BERT layers: the tower is DyHead.
"""
import torch
from detectron2.config import configurable
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .dyhead import DyConv
from .fusion import ClampedBertLayer, build_fusion

__all__ = ["VLDyHeadBlock", "VLTower"]


class VLDyHeadBlock(nn.Module):
    """fusion -> extra BERT layer -> DyConv; fusion and lang_layer are absent in GLIP-T(A)."""

    def __init__(
        self,
        dyconv: DyConv,
        fusion: nn.Module | None = None,
        lang_layer: nn.Module | None = None,
        checkpoint_dyconv: bool = False,
    ):
        super().__init__()
        self.fusion = fusion
        self.lang_layer = lang_layer
        self.dyconv = dyconv
        self.checkpoint_dyconv = checkpoint_dyconv

    def _run_dyconv(self, features: list[Tensor]) -> list[Tensor]:
        if self.checkpoint_dyconv and self.training and torch.is_grad_enabled():
            return checkpoint(lambda *xs: self.dyconv(list(xs)), *features, use_reentrant=False)
        return self.dyconv(features)

    def forward(self, features: list[Tensor], lang: dict[str, Tensor] | None):
        if self.fusion is not None:
            features, lang = self.fusion(features, lang)
        if self.lang_layer is not None:
            lang = dict(lang)
            lang["hidden"] = self.lang_layer(lang["hidden"], lang.get("masks"))
        return self._run_dyconv(features), lang


class VLTower(nn.Module):
    """The VL-DyHead tower: ``blocks[b]`` maps (features, lang) -> (features, lang), lang["hidden"] updated."""

    @configurable
    def __init__(self, *, blocks: list[VLDyHeadBlock]):
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("VLTower needs at least one block (MODEL.DYHEAD.NUM_CONVS >= 1).")
        self.blocks = nn.ModuleList(blocks)

    @classmethod
    def from_config(cls, cfg) -> dict:
        num = cfg.MODEL.DYHEAD.NUM_CONVS
        if cfg.MODEL.FPN.OUT_CHANNELS != cfg.MODEL.DYHEAD.CHANNELS:
            raise ValueError(
                f"MODEL.FPN.OUT_CHANNELS ({cfg.MODEL.FPN.OUT_CHANNELS}) must equal MODEL.DYHEAD.CHANNELS "
                f"({cfg.MODEL.DYHEAD.CHANNELS}): the tower keeps one width throughout."
            )
        fuse = bool(cfg.MODEL.FUSION.TYPE)
        blocks = []
        for i in range(num):
            fusion = build_fusion(cfg) if fuse else None
            # Official: the last block's text layer exists only if the head reads the fused text features.
            want_lang = fuse and cfg.MODEL.FUSION.USE_LANG_LAYER and (
                i < num - 1 or cfg.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT
            )
            lang_layer = ClampedBertLayer(cfg) if want_lang else None
            blocks.append(
                VLDyHeadBlock(DyConv(cfg), fusion, lang_layer, checkpoint_dyconv=cfg.MODEL.DYHEAD.USE_CHECKPOINT)
            )
        return {"blocks": blocks}

    def forward(
        self, features: list[Tensor], lang: dict[str, Tensor] | None
    ) -> tuple[list[Tensor], dict[str, Tensor] | None]:
        features = list(features)
        for block in self.blocks:
            features, lang = block(features, lang)
        return features, lang
