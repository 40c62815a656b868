"""Language-aware mask head (GLIPv2; official ``VLMaskRCNNC4Predictor`` + ``vl_version`` mask loss).

Mask logits are per token: after the stock conv stack, a 2x ``ConvTranspose`` + ReLU gives pixel features that are
scored against the prompt's tokens with the dense head's dot-product form (no ``bias0``) -> [R, L, M, M].
Training averages the logits of the matched phrase's tokens and applies BCE; inference averages the logits of the
predicted row's tokens then takes the sigmoid (official ``convert_mask_grounding_to_od_logits``). Both reductions
produce one class-agnostic mask logit map per region, so detectron2's ``mask_rcnn_loss`` (crop-and-resize of the
ground-truth masks) and ``mask_rcnn_inference`` are reused unchanged.
"""
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from .alignment import RegionTokenAlignment

__all__ = ["LanguageAwareMaskHead", "phrase_mask_logits"]


def phrase_mask_logits(token_logits: torch.Tensor, token_maps: torch.Tensor) -> torch.Tensor:
    """[R, L, M, M] per-token logits and [R, L] binary token maps -> [R, 1, M, M] mean logit over each map's tokens.

    Every map must name at least one token (an empty phrase has no mask to learn or predict).
    """
    if token_logits.shape[:2] != token_maps.shape:
        raise ValueError(f"token maps {tuple(token_maps.shape)} do not match mask logits {tuple(token_logits.shape)}")
    weights = (token_maps > 0).to(token_logits.dtype)
    counts = weights.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a region's token map is empty: its phrase names no token")
    weights = weights / counts[:, None]
    return torch.einsum("rlhw,rl->rhw", token_logits, weights)[:, None]


@ROI_MASK_HEAD_REGISTRY.register()
class LanguageAwareMaskHead(BaseMaskRCNNHead):
    """Conv stack (``mask_fcn{i}``) -> ``deconv`` 2x + ReLU -> per-token logits by :class:`RegionTokenAlignment`."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: list[int],
        lang_dim: int,
        conv_norm: str = "",
        log_scale_init: float = 0.0,
        clamp_dot_product: bool = True,
        **kwargs,
    ):
        """
        Args:
            input_shape: pooled region features.
            conv_dims: output widths of the N 3x3 convs and, last, of the transposed conv (official dim_reduced).
            lang_dim: width D of the token features.
            conv_norm: normalisation of the 3x3 convs.
            log_scale_init, clamp_dot_product: as the dense head (official mask predictor: DYHEAD.LOG_SCALE, clamp).
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError("conv_dims must name at least the transposed conv's width")
        cur = input_shape.channels
        self.conv_norm_relus = []
        for k, dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(
                cur, dim, kernel_size=3, padding=1, bias=not conv_norm,
                norm=get_norm(conv_norm, dim), activation=nn.ReLU(),
            )
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            cur = dim
        self.deconv = ConvTranspose2d(cur, conv_dims[-1], kernel_size=2, stride=2, padding=0)
        for layer in self.conv_norm_relus + [self.deconv]:
            weight_init.c2_msra_fill(layer)
        self.alignment = RegionTokenAlignment(
            conv_dims[-1], lang_dim, log_scale_init=log_scale_init, prior_prob=None,
            clamp=clamp_dot_product, text_init="msra",
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(
            input_shape=input_shape,
            conv_dims=[cfg.MODEL.ROI_MASK_HEAD.CONV_DIM] * (cfg.MODEL.ROI_MASK_HEAD.NUM_CONV + 1),
            conv_norm=cfg.MODEL.ROI_MASK_HEAD.NORM,
            lang_dim=cfg.MODEL.LANGUAGE.HIDDEN_DIM,
            log_scale_init=cfg.MODEL.GLIP.LOG_SCALE_INIT,
            clamp_dot_product=cfg.MODEL.GLIP.CLAMP_DOT_PRODUCT,
        )
        return ret

    def layers(self, x: torch.Tensor, lang_features: torch.Tensor, num_rois_per_image: Sequence[int]) -> torch.Tensor:
        """Pooled features [R, C, M/2, M/2] -> per-token mask logits [R, L, M, M] against each region's own prompt."""
        if len(num_rois_per_image) != lang_features.shape[0] or sum(num_rois_per_image) != x.shape[0]:
            raise ValueError(
                f"{x.shape[0]} regions split as {list(num_rois_per_image)} do not match {lang_features.shape[0]} prompts"
            )
        for conv in self.conv_norm_relus:
            x = conv(x)
        x = F.relu(self.deconv(x))
        r, _, h, w = x.shape
        image_of_roi = torch.repeat_interleave(
            torch.arange(len(num_rois_per_image), device=x.device),
            torch.as_tensor(list(num_rois_per_image), device=x.device),
        )
        tokens, token_bias = self.alignment.project_text(lang_features)
        queries = x.flatten(2).transpose(1, 2)  # [R, HW, C], row-major pixels
        logits = self.alignment(queries, tokens[image_of_roi], token_bias[image_of_roi])  # [R, HW, L]
        return logits.transpose(1, 2).reshape(r, tokens.shape[1], h, w)

    def forward(
        self,
        x: torch.Tensor,
        instances: list[Instances],
        *,
        lang_features: torch.Tensor,
        token_maps: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor] | list[Instances]:
        """
        Args:
            x: pooled features of the regions of ``instances`` (in order).
            instances: training: foreground proposals (``proposal_boxes``, ``gt_masks``); inference: detections.
            lang_features: [B, L, D] token features of each image's prompt.
            token_maps: per image, [R_i, L] binary tokens of each region's phrase (non-empty rows).

        Returns:
            ``{"loss_mask": ...}`` in training; in inference ``instances`` with ``pred_masks`` [R_i, 1, M, M].
        """
        counts = [len(i) for i in instances]
        if [len(t) for t in token_maps] != counts:
            raise ValueError(f"token maps {[len(t) for t in token_maps]} do not match instances {counts}")
        token_logits = self.layers(x, lang_features, counts)
        maps = cat(list(token_maps), dim=0) if counts else token_logits.new_zeros(0, token_logits.shape[1])
        logits = phrase_mask_logits(token_logits, maps.to(token_logits.device))
        if self.training:
            return {"loss_mask": mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(logits, instances)
        return instances
