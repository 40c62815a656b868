"""DyHead blocks and GLIP's vision-language tower (GLIP_REFERENCE.md §1.5, pitfalls P1, P2, P14, P21).

The tower is NUM_CONVS blocks of fusion -> extra BERT layer -> DyConv. A ``DyConv`` mixes each FPN level with
its two neighbours through three (modulated deformable) 3x3 convs whose offsets/masks all come from the level
itself; the coarser neighbour's conv reads those offsets the way the official CUDA kernel does, i.e. the flat
prefix of a larger buffer (P1). Candidates are weighted by a hard-sigmoid scale attention and averaged, then a
dynamic ReLU (DyReLU) picks a per-channel piecewise-linear activation from the level's global context.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import deform_conv2d

from .deform_conv import check_deform_impl, deform_conv2d_gather, resolve_deform_impl
from .fusion import ClampedBertLayer, build_fusion

__all__ = [
    "DyConv",
    "DyReLU",
    "ModulatedDeformConv2d",
    "VLDyHeadBlock",
    "VLTower",
    "hard_sigmoid",
    "kernel_view",
    "modulated_deform_conv",
]


def hard_sigmoid(x: Tensor) -> Tensor:
    """relu6(x + 3) / 6, the official h_sigmoid."""
    return F.relu6(x + 3.0) / 6.0


def kernel_view(t: Tensor, channels: int, height: int, width: int) -> Tensor:
    """What the official DCN kernel reads from a per-image offset/mask buffer for an H x W output (P1).

    The CUDA op takes each image's buffer pointer and indexes it as a contiguous [channels, H, W] array without
    checking its real size, so a buffer computed at a finer level yields its first channels*H*W values.
    Identity when the shapes already match.
    """
    b = t.shape[0]
    if t.shape[1:] == (channels, height, width):
        return t
    n = channels * height * width
    flat = t.reshape(b, -1)
    if flat.shape[1] < n:
        raise ValueError(
            f"offset/mask buffer of shape {tuple(t.shape)} is smaller than the {channels}x{height}x{width} values "
            "the deformable conv reads per image; the official kernel would read past the image's buffer."
        )
    return flat[:, :n].reshape(b, channels, height, width)


def modulated_deform_conv(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int = 1,
    padding: int = 1,
    impl: str = "auto",
) -> Tensor:
    """DCNv2 (one deformable group) with the official op's semantics: ``torchvision.ops.deform_conv2d`` or the
    equivalent gathers of ``deform_conv.py`` (``impl``, see ``MODEL.DYHEAD.DEFORM_IMPL``).

    ``offset`` holds (dy, dx) per kernel tap, tap-major; ``mask`` is already sigmoid-ed. Offsets/masks whose
    spatial size differs from the output are re-read as the official kernel does (``kernel_view``). Under
    autocast everything runs in fp32, as the official ``custom_fwd(cast_inputs=torch.float32)``.
    """
    kh, kw = weight.shape[-2:]
    h_out = (x.shape[2] + 2 * padding - kh) // stride + 1
    w_out = (x.shape[3] + 2 * padding - kw) // stride + 1
    offset = kernel_view(offset, 2 * kh * kw, h_out, w_out)
    mask = kernel_view(mask, kh * kw, h_out, w_out)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, offset, mask, weight, bias)
    )
    use_gather = resolve_deform_impl(impl, x.device, needs_grad) == "gather"

    def run(x, offset, mask, weight, bias):
        if use_gather:
            return deform_conv2d_gather(x, offset, weight, bias, mask, stride, padding)
        return deform_conv2d(x, offset, weight, bias, stride=(stride, stride), padding=(padding, padding), mask=mask)

    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        def fp32(t):
            return t.float() if t is not None and t.is_floating_point() else t

        with torch.autocast(device_type=device_type, enabled=False):
            return run(fp32(x), fp32(offset), fp32(mask), fp32(weight), fp32(bias))
    return run(x, offset, mask, weight, bias)


class ModulatedDeformConv2d(nn.Module):
    """A k x k modulated deformable conv with bias whose offsets and masks are given in ``forward``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        impl: str = "auto",
    ):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # Official ModulatedDeformConv init (DyConv's N(0, 0.01) init only touches nn.Conv2d, not this).
        bound = 1.0 / (in_channels * kernel_size * kernel_size) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return modulated_deform_conv(x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.impl)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, impl={self.impl}"


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
        y = hard_sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, c, dim=1)
        # lambda_a = 2, init_a = (1, 0), init_b = (0, 0): identity-like at a "neutral" 0.5 output.
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.max(x * a1 + b1, x * a2 + b2)


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
        outputs = []
        for level, x in enumerate(features):
            offset = mask = None
            if self.offset is not None:
                offset_mask = self.offset(x)
                offset = offset_mask[:, :18]
                mask = offset_mask[:, 18:].sigmoid()
            # Every candidate reads the block inputs and this level's offsets/masks.
            candidates = [self.same_conv(x, offset, mask)]
            if level > 0:
                candidates.append(self.finer_conv(features[level - 1], offset, mask))
            if level < len(features) - 1:
                coarser = self.coarser_conv(features[level + 1], offset, mask)
                # official F.upsample_bilinear == align_corners=True (P2)
                candidates.append(F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=True))
            stacked = torch.stack(candidates)
            if self.scale_attn is not None:
                weights = torch.stack(
                    [F.relu(self.scale_attn(F.adaptive_avg_pool2d(c, 1))) for c in candidates]
                )
                fused = torch.mean(stacked * hard_sigmoid(weights), dim=0)
            else:
                fused = torch.mean(stacked, dim=0)
            outputs.append(fused)
        act = self.dyrelu if self.dyrelu is not None else F.relu
        return [act(y) for y in outputs]


class VLDyHeadBlock(nn.Module):
    """fusion -> extra BERT layer -> DyConv (P14); fusion and lang_layer are absent in GLIP-T(A)."""

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
