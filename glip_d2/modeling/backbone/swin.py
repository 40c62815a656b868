"""Swin Transformer (v1) as a detectron2 ``Backbone``, laid out exactly like GLIP's detection port.

GLIP uses the Swin-Transformer-Object-Detection flavour of Swin, which differs from the
classification Swin (e.g. timm's) in ways that change numbers on detection-sized inputs:

* any input size: the image is zero-padded to a multiple of the patch size, and every block zero-pads its
  (normalised) tokens to a multiple of the window size *before* the cyclic shift; the padded tokens take part
  in attention as keys (only the shift regions are masked);
* the shift mask (-100 between tokens of different regions) is computed for the padded size at run time;
* a stage whose map is smaller than the window still uses the full window and the shift (no clamping).

Parameter and module names follow the official state dict (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``, output norms ``norm1..norm3``), so official weights load without renaming
(``relative_position_index`` is recomputed and not saved).
"""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from timm.layers import DropPath, Mlp
from torch import nn

from .fpn import GLIPFPN

__all__ = [
    "SwinTransformer",
    "build_swin_glip_fpn_backbone",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

# Value added to the attention logits of token pairs that the cyclic shift brought together (official -100).
SHIFT_MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of the window) -> [B * nW, window_size, window_size, C], row-major windows."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * nW, ws, ws, C] -> [B, H, W, C]."""
    C = windows.shape[-1]
    B = windows.shape[0] // ((H // window_size) * (W // window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


def relative_position_index(window_size: int) -> torch.Tensor:
    """[ws², ws²] index into the (2ws-1)² bias table: (dy + ws - 1) * (2ws - 1) + (dx + ws - 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # 2, ws*ws
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # ws², ws², 2 (query minus key)
    rel = rel + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def shifted_window_mask(
    Hp: int, Wp: int, window_size: int, shift_size: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Additive attention mask [nW, ws², ws²] for the cyclically shifted (padded) Hp x Wp map.

    After rolling by -shift, the last window row/column holds tokens from up to three original regions
    (split at -window and -shift from the end); tokens of different regions must not attend to each other.
    """
    region = torch.zeros((1, Hp, Wp, 1), device=device, dtype=dtype)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[:, hs, ws, :] = label
            label += 1
    region = window_partition(region, window_size).reshape(-1, window_size * window_size)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Swin stage width {dim} is not divisible by its number of heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Recomputed from the window size; not saved (the checkpoint converter drops the official copy).
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] additive or None."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_prob: float,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path_prob)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # fc1 -> GELU -> fc2, the official names

    def forward(self, x: torch.Tensor, H: int, W: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, H*W, C]; shift_mask: the stage's mask for the padded size (used only when shifted)."""
        B, _, C = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        # Pad after the norm, before the shift (official order): padded tokens are zero vectors.
        pad_b = (ws - H % ws) % ws
        pad_r = (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shift_mask
        else:
            mask = None
        windows = window_partition(x, ws).reshape(-1, ws * ws, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, ws, ws, C), ws, Hp, Wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :H, :W, :].reshape(B, H * W, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concat (even,even), (odd,even), (even,odd), (odd,odd) rows/cols, LN, 4C->2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 == 1 or W % 2 == 1:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating plain / shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_probs: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio,
                    qkv_bias,
                    drop_path_probs[i],
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Returns (stage output [B, H*W, C], input of the next stage, its H, its W)."""
        ws = self.window_size
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        mask = None
        if self.shift_size > 0 and len(self.blocks) > 1:
            mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, device=x.device, dtype=x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(blk, x, H, W, mask, use_reentrant=False)
            else:
                x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, x, H, W
        return x, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 patches -> tokens (conv), then LayerNorm. Pads the image to a multiple of 4."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        x = self.proj(x)  # B, C, Wh, Ww
        B, C, Wh, Ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(B, C, Wh, Ww)


class SwinTransformer(Backbone):
    """Swin v1 backbone: outputs ``stage2..stage5`` (strides 4, 8, 16, 32), each NCHW.

    Output norms: ``norm0`` is Identity (GLIP's "...-RETINANET" architectures), ``norm1..norm3`` LayerNorm.
    ``frozen_stages`` follows the official meaning: -1 nothing, 0 the patch embedding, k >= 2 the patch
    embedding and ``layers.0 .. layers.{k-2}``; frozen parts stay in eval mode (no stochastic depth).
    """

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        frozen_stages: int = -1,
        use_checkpoint: bool = False,
        out_features: Sequence[str] = ("stage2", "stage3", "stage4", "stage5"),
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} differ in length")
        self.num_layers = len(depths)
        names = [f"stage{i + 2}" for i in range(self.num_layers)]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"Unknown Swin output features {unknown}; available: {names}")
        self.frozen_stages = frozen_stages
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # linear stochastic-depth schedule
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(
                BasicLayer(
                    dim=self.num_features[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path_probs=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < self.num_layers - 1,
                    # as official: no checkpointing inside frozen stages
                    use_checkpoint=use_checkpoint and i > frozen_stages - 1,
                )
            )

        self._out_features = [n for n in names if n in out_features]
        self._out_feature_channels = {}
        self._out_feature_strides = {}
        for i, name in enumerate(names):
            if name in self._out_features:
                self._out_feature_channels[name] = self.num_features[i]
                self._out_feature_strides[name] = patch_size * 2**i
                self.add_module(f"norm{i}", nn.Identity() if i == 0 else nn.LayerNorm(self.num_features[i]))

        self.apply(self._init_weights)
        self._freeze_stages()

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec | None = None):
        s = cfg.MODEL.SWIN
        if s.APE:
            raise ValueError("MODEL.SWIN.APE=True is not supported (GLIP uses no absolute position embedding)")
        return {
            "in_chans": input_shape.channels if input_shape is not None else len(cfg.MODEL.PIXEL_MEAN),
            "embed_dim": s.EMBED_DIM,
            "depths": list(s.DEPTHS),
            "num_heads": list(s.NUM_HEADS),
            "window_size": s.WINDOW_SIZE,
            "mlp_ratio": s.MLP_RATIO,
            "qkv_bias": s.QKV_BIAS,
            "drop_path_rate": s.DROP_PATH_RATE,
            "frozen_stages": s.FREEZE_AT,
            "use_checkpoint": s.USE_CHECKPOINT,
        }

    @staticmethod
    def _init_weights(m):
        # Official init_weights: truncated normal for Linear, LayerNorm to identity (conv keeps torch default).
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        mods = []
        if self.frozen_stages >= 0:
            mods.append(self.patch_embed)
        if self.frozen_stages >= 2:
            mods.extend(self.layers[i] for i in range(min(self.frozen_stages - 1, self.num_layers)))
        return mods

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        """Switch mode but keep the frozen stages in eval mode (as the official backbone does)."""
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"Swin expects images as [B, C, H, W], got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        H, W = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outputs = {}
        for i, layer in enumerate(self.layers):
            out, x, H_next, W_next = layer(x, H, W)
            name = f"stage{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.reshape(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            H, W = H_next, W_next
        return outputs


@BACKBONE_REGISTRY.register()
def build_swin_glip_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Swin (MODEL.SWIN.*) + GLIP FPN reading MODEL.SWIN.OUT_FEATURES (stage3..5) -> p3..p7."""
    bottom_up = SwinTransformer(cfg, input_shape)
    return GLIPFPN(cfg, bottom_up=bottom_up, in_features=cfg.MODEL.SWIN.OUT_FEATURES)
