"""GLIP's FPN: three lateral/output levels P3..P5 on top of any bottom-up backbone, plus P6/P7 from P5.

Differences from detectron2's ``FPN`` that matter for official numbers (official detail 21):
the top-down path upsamples to the lateral's exact size (works for any input size), and in training a
DropBlock is applied to the merged laterals of P3 and P4 right before their output convs.
Module names are detectron2's (``fpn_lateral{3,4,5}``, ``fpn_output{3,4,5}``, ``top_block.p6/p7``).
The official key names map onto them in the checkpoint converter (``glip_d2.checkpoint.convert``).
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.backbone import Backbone
from torch import nn

__all__ = ["GLIPFPN", "DropBlock2D", "LastLevelP6P7"]


def _kaiming_uniform_init(conv: nn.Conv2d) -> None:
    # maskrcnn_benchmark's conv_with_kaiming_uniform: kaiming_uniform(a=1), bias 0.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.constant_(conv.bias, 0)


class DropBlock2D(nn.Module):
    """DropBlock as in maskrcnn_benchmark/GLIP (train only; identity in eval).

    Block centres are sampled per image and position (shared by all channels) with probability
    gamma = drop_prob / block_size²; each centre zeroes a block_size x block_size square (max-pool with
    padding block_size // 2, trimmed by one row/column for even sizes); the result is rescaled by
    numel(mask) / sum(mask) over the whole batch.
    """

    def __init__(self, drop_prob: float, block_size: int):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"DropBlock probability must be in [0, 1], got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"DropBlock block size must be >= 1, got {block_size}")
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)

    @property
    def gamma(self) -> float:
        return self.drop_prob / (self.block_size**2)

    def block_mask(self, seeds: torch.Tensor) -> torch.Tensor:
        """seeds [N, H, W] in {0, 1} -> keep mask [N, H, W] (0 inside any block)."""
        bs = self.block_size
        dropped = F.max_pool2d(seeds[:, None], kernel_size=bs, stride=1, padding=bs // 2)
        if bs % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]
        return 1 - dropped[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DropBlock2D expects [N, C, H, W], got shape {tuple(x.shape)}")
        if not self.training or self.drop_prob == 0.0:
            return x
        seeds = (torch.rand(x.shape[0], *x.shape[2:], device=x.device) < self.gamma).to(x.dtype)
        keep = self.block_mask(seeds)
        # Official divides by keep.sum() unguarded (NaN if everything is dropped); clamp keeps it finite.
        return x * keep[:, None] * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class LastLevelP6P7(nn.Module):
    """P6 = 3x3/2 conv on P5; P7 = 3x3/2 conv on ReLU(P6) (GLIP feeds P5, since in = out channels)."""

    def __init__(self, channels: int):
        super().__init__()
        self.num_levels = 2
        self.in_feature = "p5"
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            _kaiming_uniform_init(conv)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class GLIPFPN(Backbone):
    """FPN over the last three bottom-up features (strides 8, 16, 32) -> ``p3..p7`` (strides 8..128)."""

    @configurable
    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int = 256,
        drop_block_prob: float = 0.3,
        drop_block_size: int = 3,
        use_drop_block: bool = True,
    ):
        super().__init__()
        in_features = list(in_features)
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"FPN input features {missing} are not produced by the bottom-up backbone "
                             f"(it outputs {list(shapes)})")
        strides = [shapes[f].stride for f in in_features]
        if strides != [8, 16, 32]:
            raise ValueError(f"GLIPFPN needs three inputs with strides [8, 16, 32]; got {dict(zip(in_features, strides))}")
        self.bottom_up = bottom_up
        self.in_features = in_features
        for level, f in zip((3, 4, 5), in_features):
            lateral = nn.Conv2d(shapes[f].channels, out_channels, 1)
            output = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
            _kaiming_uniform_init(lateral)
            _kaiming_uniform_init(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.top_block = LastLevelP6P7(out_channels)
        self.drop_block = DropBlock2D(drop_block_prob, drop_block_size) if use_drop_block else None

        self._out_features = [f"p{s}" for s in range(3, 8)]
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._out_feature_strides = {f"p{s}": 2**s for s in range(3, 8)}

    @classmethod
    def from_config(cls, cfg, bottom_up: Backbone, in_features: Sequence[str]):
        return {
            "bottom_up": bottom_up,
            "in_features": in_features,
            "out_channels": cfg.MODEL.FPN.OUT_CHANNELS,
            "drop_block_prob": cfg.MODEL.FPN.DROP_BLOCK_PROB,
            "drop_block_size": cfg.MODEL.FPN.DROP_BLOCK_SIZE,
            "use_drop_block": cfg.MODEL.FPN.DROP_BLOCK,
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    @property
    def padding_constraints(self) -> dict[str, int]:
        # newer detectron2 reads this instead of size_divisibility
        return {"size_divisibility": 32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.bottom_up(x)
        c3, c4, c5 = (feats[f] for f in self.in_features)
        p5_inner = self.fpn_lateral5(c5)
        p5 = self.fpn_output5(p5_inner)
        p4_inner = self.fpn_lateral4(c4)
        p4_inner = p4_inner + F.interpolate(p5_inner, size=p4_inner.shape[-2:], mode="nearest")
        p4 = self.fpn_output4(self._maybe_drop(p4_inner))
        p3_inner = self.fpn_lateral3(c3)
        # the top-down path carries the un-dropped merged lateral
        p3_inner = p3_inner + F.interpolate(p4_inner, size=p3_inner.shape[-2:], mode="nearest")
        p3 = self.fpn_output3(self._maybe_drop(p3_inner))
        p6, p7 = self.top_block(p5)
        return {"p3": p3, "p4": p4, "p5": p5, "p6": p6, "p7": p7}

    def _maybe_drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_block is not None and self.training:
            return self.drop_block(x)
        return x


# Official (microsoft/GLIP, ``module.`` stripped) -> glip_d2 names for the visual backbone. Order matters.
