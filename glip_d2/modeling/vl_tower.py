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

    # ---- captioning: causal text, image not updated from the text ----------------------------------------------
    def caption_image_pass(self, features: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per block, what a caption's tokens read from the image (``BiAttentionFusion.image_side``).

        Depends on the image only, so decoding computes it once per image and then runs only
        ``caption_text_pass`` per step. The last block's DyConv feeds only the detection head and is skipped.
        """
        if any(block.fusion is None for block in self.blocks):
            raise ValueError("captioning needs image<->text fusion in every tower block (MODEL.FUSION.TYPE)")
        keys, features = [], list(features)
        for i, block in enumerate(self.blocks):
            maps, block_keys = block.fusion.image_side(features)
            keys.append(block_keys)
            if i < len(self.blocks) - 1:
                features = block._run_dyconv(maps)
        return keys

    def caption_text_pass(self, image_keys: list[tuple[Tensor, Tensor]], lang: dict[str, Tensor]) -> dict:
        """The tower's text side in causal mode: per block, tokens read the image, then the extra BERT layer with a
        causal mask. ``lang["hidden"]`` may hold k captions per image (image-major), as in beam search."""
        lang = dict(lang)
        for block, block_keys in zip(self.blocks, image_keys):
            hidden = block.fusion.text_side(lang["hidden"], block_keys)
            if block.lang_layer is not None:
                hidden = block.lang_layer(hidden, lang.get("masks"), causal=True)
            lang["hidden"] = hidden
        return lang

    def caption_idle_parameters(self) -> list[nn.Parameter]:
        """Parameters captioning does not use (the image update of each fusion, the last DyConv)."""
        idle = [p for block in self.blocks for p in block.fusion.image_update_parameters()]
        return idle + list(self.blocks[-1].dyconv.parameters())
