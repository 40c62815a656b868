"""GLIP's dense grounding head: box deltas, centerness, region-token logits.

The classifier is a dot product between every location's feature and every prompt token: text features are
L2-normalised, halved and projected to the visual width (``text_proj``), a per-token bias
``normalised_text . bias_lang + bias0`` is added after dividing by ``exp(log_scale)``, and the logits are clamped
to +-50000 (official detail 5). Which text features come in (fused tower output or masked BERT output, official detail 13) is the
caller's choice. The official 80-way ``cls_logits`` conv is dead weight and left out (official detail 12).
"""
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ...layers.fp16_clamp import clamp_fp16_safe

__all__ = ["GroundingHead", "Scale"]


class Scale(nn.Module):
    """A learned scalar multiplier (one per FPN level on the box deltas)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GroundingHead(nn.Module):
    """Per-level 1x1 predictors on the tower's output plus the region-token dot product."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        lang_dim: int,
        num_levels: int = 5,
        num_anchors: int = 1,
        log_scale_init: float = 0.0,
        prior_prob: float = 0.01,
        clamp_dot_product: bool = True,
    ):
        super().__init__()
        if num_anchors != 1:
            raise ValueError(f"GLIP's head predicts one anchor per location, got num_anchors={num_anchors}")
        self.in_channels = in_channels
        self.lang_dim = lang_dim
        self.clamp_dot_product = clamp_dot_product
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.text_proj = nn.Linear(lang_dim, in_channels)  # official dot_product_projection_text (default init)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale_init)]))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, 0.0)

    @classmethod
    def from_config(cls, cfg):
        return {
            "in_channels": cfg.MODEL.DYHEAD.CHANNELS,
            "lang_dim": cfg.MODEL.LANGUAGE.HIDDEN_DIM,
            "num_levels": len(cfg.MODEL.ATSS.IN_FEATURES),
            "num_anchors": len(cfg.MODEL.ATSS.ASPECT_RATIOS),
            "log_scale_init": cfg.MODEL.GLIP.LOG_SCALE_INIT,
            "prior_prob": cfg.MODEL.GLIP.PRIOR_PROB,
            "clamp_dot_product": cfg.MODEL.GLIP.CLAMP_DOT_PRODUCT,
        }

    def forward(self, features: list[torch.Tensor], text: torch.Tensor) -> dict[str, object]:
        """``features``: [B, C, H_l, W_l] per level; ``text``: [B, L, D] -> dict (see docs/architecture.md)."""
        if len(features) != len(self.scales):
            raise ValueError(f"GroundingHead built for {len(self.scales)} levels, got {len(features)}")
        if text.dim() != 3 or text.shape[-1] != self.lang_dim or text.shape[0] != features[0].shape[0]:
            raise ValueError(
                f"text features must be [B={features[0].shape[0]}, L, {self.lang_dim}], got {tuple(text.shape)}"
            )
        text = F.normalize(text, p=2, dim=-1)
        proj_tokens = self.text_proj(text / 2.0)  # [B, L, C]
        token_bias = torch.matmul(text, self.bias_lang) + self.bias0  # [B, L]
        temperature = self.log_scale.exp()

        box_regression, centerness, logits = [], [], []
        for feature, scale in zip(features, self.scales):
            box_regression.append(scale(self.bbox_pred(feature)))
            centerness.append(self.centerness(feature))
            queries = feature.flatten(2).transpose(1, 2)  # [B, H*W, C], row-major locations
            logit = torch.matmul(queries, proj_tokens.transpose(-1, -2)) / temperature + token_bias[:, None, :]
            if self.clamp_dot_product:
                logit = clamp_fp16_safe(logit)
            logits.append(logit)
        return {
            "box_regression": box_regression,
            "centerness": centerness,
            "dot_product_logits": logits,
            "proj_tokens": proj_tokens,
        }
