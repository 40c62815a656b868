"""DyHead's dynamic convolution block (official ``DyConv``) on the visual pyramid.

A ``DyConv`` mixes each FPN level with its two neighbours through three (modulated deformable) 3x3 convs whose
offsets/masks all come from the level itself; the coarser neighbour's conv reads those offsets the way the
official CUDA kernel does (``layers.kernel_view``). Candidates are weighted by a hard-sigmoid scale attention and
averaged, then a dynamic ReLU (DyReLU) picks a per-channel piecewise-linear activation from the level's global
context.
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from ..layers import ModulatedDeformConv2d, check_deform_impl

__all__ = ["DyConv", "DyReLU"]


class _ConvNorm(nn.Module):
    """3x3 conv (deformable or plain) followed by an optional GroupNorm (official ``Conv3x3Norm``)."""

    def __init__(self, channels: int, stride: int, deformable: bool, gn_groups: int | None, impl: str = "auto"):
        super().__init__()
        if deformable:
            self.conv = ModulatedDeformConv2d(channels, channels, 3, stride=stride, padding=1, impl=impl)
        else:
            self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
            nn.init.normal_(self.conv.weight, 0.0, 0.01)
            nn.init.zeros_(self.conv.bias)
        self.norm = nn.GroupNorm(gn_groups, channels) if gn_groups else None

    def forward(self, x: Tensor, offset: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        x = self.conv(x, offset, mask) if isinstance(self.conv, ModulatedDeformConv2d) else self.conv(x)
        return self.norm(x) if self.norm is not None else x


class DyReLU(nn.Module):
    """Task-aware attention: out = max(x*a1 + b1, x*a2 + b2), coefficients per image and channel from GAP(x)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, 4 * channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        y = F.hardsigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, c, dim=1)
        # lambda_a = 2, init_a = (1, 0), init_b = (0, 0): identity-like at a "neutral" 0.5 output.
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.maximum(torch.addcmul(b1, x, a1), torch.addcmul(b2, x, a2))


class DyConv(nn.Module):
    """One DyHead block on the visual pyramid (official ``DyConv``); levels ordered fine -> coarse."""

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        use_deform: bool = True,
        use_gn: bool = True,
        gn_groups: int = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        deform_impl: str = "auto",
    ):
        super().__init__()
        if use_gn and channels % gn_groups != 0:
            raise ValueError(f"DyHead channels ({channels}) must be divisible by MODEL.DYHEAD.GN_GROUPS ({gn_groups}).")
        check_deform_impl(deform_impl)
        self.channels = channels
        groups = gn_groups if use_gn else None
        self.coarser_conv = _ConvNorm(channels, 1, use_deform, groups, deform_impl)  # on level l+1, then upsampled
        self.same_conv = _ConvNorm(channels, 1, use_deform, groups, deform_impl)
        self.finer_conv = _ConvNorm(channels, 2, use_deform, groups, deform_impl)  # stride 2 on level l-1
        self.offset = nn.Conv2d(channels, 27, 3, padding=1) if use_deform else None  # PyTorch default init
        if use_dyfuse:
            self.scale_attn = nn.Conv2d(channels, 1, 1)
            nn.init.normal_(self.scale_attn.weight, 0.0, 0.01)
            nn.init.zeros_(self.scale_attn.bias)
        else:
            self.scale_attn = None
        self.dyrelu = DyReLU(channels) if use_dyrelu else None

    @classmethod
    def from_config(cls, cfg) -> dict:
        d = cfg.MODEL.DYHEAD
        return {
            "channels": d.CHANNELS,
            "use_deform": d.USE_DFCONV,
            "use_gn": d.USE_GN,
            "gn_groups": d.GN_GROUPS,
            "use_dyrelu": d.USE_DYRELU,
            "use_dyfuse": d.USE_DYFUSE,
            "deform_impl": d.DEFORM_IMPL,
        }

    def _check_inputs(self, features: list[Tensor]) -> None:
        if not isinstance(features, (list, tuple)) or len(features) == 0:
            raise ValueError("DyConv expects a non-empty list of [B, C, H, W] feature maps (fine to coarse).")
        for i, x in enumerate(features):
            if x.dim() != 4 or x.shape[1] != self.channels or x.shape[0] != features[0].shape[0]:
                expected = f"[{features[0].shape[0]}, {self.channels}, H, W]"
                raise ValueError(f"features[{i}] has shape {tuple(x.shape)}; expected {expected}.")

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        self._check_inputs(features)
        sources = features  # what the three convs read: each map converted once if they read channels-last
        if isinstance(self.same_conv.conv, ModulatedDeformConv2d) and self.same_conv.conv.reads_channels_last(
            features[0].device
        ):
            sources = [x.contiguous(memory_format=torch.channels_last) for x in features]
        outputs = []
        for level, x in enumerate(features):
            offset = mask = None
            if self.offset is not None:
                offset_mask = self.offset(x)
                offset = offset_mask[:, :18]
                mask = offset_mask[:, 18:].sigmoid()
            # Every candidate reads the block inputs and this level's offsets/masks.
            candidates = [self.same_conv(sources[level], offset, mask)]
            if level > 0:
                candidates.append(self.finer_conv(sources[level - 1], offset, mask))
            if level < len(features) - 1:
                coarser = self.coarser_conv(sources[level + 1], offset, mask)
                # official F.upsample_bilinear == align_corners=True (official detail 2)
                candidates.append(F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=True))
            if self.scale_attn is not None:  # scale attention: hard sigmoid of a 1x1 conv on each candidate's GAP
                candidates = [c * F.hardsigmoid(F.relu(self.scale_attn(F.adaptive_avg_pool2d(c, 1)))) for c in candidates]
            fused = candidates[0]
            for c in candidates[1:]:  # their mean, without stacking them
                fused = fused + c
            fused = fused / len(candidates)
            outputs.append(fused)
        act = self.dyrelu if self.dyrelu is not None else F.relu
        return [act(y) for y in outputs]
