"""GLIP's bi-directional image<->text cross attention ("MHA-B", ).

One score matrix S = (Q_v / sqrt(d)) K_l^T per head serves both directions: image positions attend over tokens
(softmax over tokens, padded tokens masked) and tokens attend over *all* image positions of all levels at once
(softmax over positions, no mask at all, official detail 4). Both sides are pre-LayerNormed and the residual is added to the
*normalised* inputs with a learned per-channel layer scale (official detail 3). Scores are clamped to +-50000 so fp16 never
overflows (official detail 5); in fp32 the clamps only matter for pathological inputs.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...layers.fp16_clamp import FP16_SAFE_LIMIT
from .build import register_fusion

__all__ = ["MASKED_SCORE", "BiAttentionFusion", "BiMultiHeadAttention"]

#: Magnitude of every fusion clamp (fits fp16, whose max is 65504).
#: Additive score of a padded token on the image side (official value; becomes -inf in fp16, as officially).
MASKED_SCORE = -9e15


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention computed once and read both ways; returns the two updates (delta_v, delta_l)."""

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
        stable_softmax_2d: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}).")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = dropout
        self.clamp_min_for_underflow = clamp_min_for_underflow
        self.clamp_max_for_overflow = clamp_max_for_overflow
        self.stable_softmax_2d = stable_softmax_2d

        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for layer in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                      self.out_l_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _clamp(self, x: Tensor, inplace: bool = False) -> Tensor:
        """The +-FP16_SAFE_LIMIT clamps, in one pass (in place when ``inplace``: a fresh tensor autograd does not need)."""
        low = -FP16_SAFE_LIMIT if self.clamp_min_for_underflow else None
        high = FP16_SAFE_LIMIT if self.clamp_max_for_overflow else None
        if low is None and high is None:
            return x
        return x.clamp_(low, high) if inplace else x.clamp(low, high)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, N, E] -> [B * heads, N, head_dim]."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2).reshape(b * self.num_heads, n, self.head_dim)

    def _merge(self, x: Tensor, b: int) -> Tensor:
        """[B * heads, N, head_dim] -> [B, N, E]."""
        n = x.shape[1]
        return x.view(b, self.num_heads, n, self.head_dim).transpose(1, 2).reshape(b, n, self.embed_dim)

    def forward(self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """v: [B, N, v_dim] image positions, l: [B, T, l_dim] tokens, attention_mask_l: [B, T] (0 = padding)."""
        if not self.training and self.num_heads * l.shape[1] < self.embed_dim:
            return self._forward_in_token_space(v, l, attention_mask_l)
        bsz, n_img, _ = v.shape
        n_tok = l.shape[1]
        query = self._heads(self.v_proj(v) * self.scale)
        key = self._heads(self.l_proj(l))
        value_v = self._heads(self.values_v_proj(v))
        value_l = self._heads(self.values_l_proj(l))
        scores = torch.bmm(query, key.transpose(1, 2)).view(bsz, self.num_heads, n_img, n_tok)
        probs_v, probs_l = self._attention(scores, attention_mask_l)
        flat = (bsz * self.num_heads, n_img, n_tok)
        out_v = self._merge(torch.bmm(probs_v.view(flat), value_l), bsz)
        out_l = self._merge(torch.bmm(probs_l.view(flat).transpose(1, 2), value_v), bsz)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)

    def _attention(self, scores: Tensor, attention_mask_l: Tensor | None) -> tuple[Tensor, Tensor]:
        """Scores [B, h, N, T] -> (image->token probabilities, softmax over T; token->image ones, softmax over N),
        both laid out [B, h, N, T].

        Without autograd every step after the first works in place, and the token->image softmax, whose inputs
        already have their maximum at 0, is exp / sum (the kernel's own arithmetic, with less memory traffic).
        """
        inplace = not (torch.is_grad_enabled() and scores.requires_grad)
        if self.stable_softmax_2d:
            scores = scores - scores.max()  # one global max over the whole batch, as officially
        scores = self._clamp(scores, inplace)

        # Tokens -> image: max subtraction per token and a second clamp, softmax over every image position, no mask.
        scores_l = self._clamp(scores - scores.amax(dim=2, keepdim=True), inplace)
        if inplace:
            probs_l = scores_l.exp_()
            probs_l = probs_l.div_(probs_l.sum(dim=2, keepdim=True))
        else:
            probs_l = scores_l.softmax(dim=2)

        # Image -> tokens: the official adds the mask itself (so valid tokens get +1) and -9e15 at padding.
        if attention_mask_l is not None:
            m = attention_mask_l.to(scores.dtype)
            masked = torch.tensor(MASKED_SCORE, dtype=torch.float32, device=scores.device).to(scores.dtype)
            additive = torch.where(attention_mask_l == 0, masked, m)[:, None, None, :]
            scores = scores.add_(additive) if inplace else scores + additive
        probs_v = F.softmax(scores, dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
        return probs_v, probs_l

    def _forward_in_token_space(self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None) -> tuple[Tensor, Tensor]:
        """``forward`` with the products re-associated so that no [N, embed_dim] tensor exists (inference, when
        heads x tokens < embed_dim: a short prompt against a large image).

        Per head h, with the image-side projections W (weight [d, v_dim]) and b folded into the token side:
        scores_h = v (scale K_h W_q,h)^T + scale K_h b_q,h;  probs_l,h V_v,h = (probs_l,h v) W_v,h^T + (row sum) b_v,h;
        out_v = sum_h probs_v,h (V_l,h W_o,h^T) + b_o. Same values up to float rounding (the fidelity test
        compares both paths stage by stage); the work drops from N x v_dim x embed_dim to N x v_dim x heads x T.
        """
        bsz, n_img, v_dim = v.shape
        n_tok, h, d = l.shape[1], self.num_heads, self.head_dim
        key = self.l_proj(l).view(bsz, n_tok, h, d).transpose(1, 2)  # [B, h, T, d]
        w_q = self.v_proj.weight.view(h, d, v_dim)
        folded_q = torch.matmul(key, w_q) * self.scale  # [B, h, T, v_dim]
        folded_b = torch.matmul(key, self.v_proj.bias.view(h, d, 1)).squeeze(-1) * self.scale  # [B, h, T]
        scores = torch.matmul(v.unsqueeze(1), folded_q.transpose(2, 3)).add_(folded_b.unsqueeze(2))  # [B, h, N, T]
        probs_v, probs_l = self._attention(scores, attention_mask_l)

        # tokens -> image: read v itself, then project with values_v_proj's per-head block
        probs_l = probs_l.transpose(2, 3)  # [B, h, T, N], a view
        read = torch.matmul(probs_l, v.unsqueeze(1))  # [B, h, T, v_dim]
        w_v = self.values_v_proj.weight.view(h, d, v_dim)
        out_l = torch.matmul(read, w_v.transpose(1, 2))  # [B, h, T, d]
        out_l = out_l + probs_l.sum(-1, keepdim=True) * self.values_v_proj.bias.view(h, 1, d)
        out_l = out_l.transpose(1, 2).reshape(bsz, n_tok, self.embed_dim)

        # image -> tokens: fold out_v_proj's per-head block into the token values
        value_l = self.values_l_proj(l).view(bsz, n_tok, h, d).transpose(1, 2)  # [B, h, T, d]
        w_o = self.out_v_proj.weight.view(v_dim, h, d).permute(1, 2, 0)  # [h, d, v_dim]
        folded_o = torch.matmul(value_l, w_o).reshape(bsz, h * n_tok, v_dim)
        probs = probs_v.transpose(1, 2).reshape(bsz, n_img, h * n_tok)
        out_v = torch.baddbmm(self.out_v_proj.bias.expand(bsz, n_img, v_dim), probs, folded_o)
        return out_v, self.out_l_proj(out_l)


    def image_keys(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """What tokens read from the image positions v [B, N, v_dim]: scaled queries and values, [B*heads, N, hd]."""
        return self._heads(self.v_proj(v) * self.scale), self._heads(self.values_v_proj(v))

    def text_update(self, l: Tensor, image_keys: tuple[Tensor, Tensor]) -> Tensor:
        """delta_l alone (tokens -> image), computed as ``forward`` does; the image is not updated.

        No token reads another token here, so the token sequences of several captions of one image may be stacked
        along T (beam search does). The global max of STABLE_SOFTMAX_2D is not subtracted: it would let every token
        depend on every other; the per-token max already keeps the softmax stable.
        """
        query, value_v = image_keys
        key = self._heads(self.l_proj(l))
        scores_l = self._clamp(torch.bmm(key, query.transpose(1, 2)))  # [B*h, T, N]
        scores_l = self._clamp(scores_l - scores_l.max(dim=-1, keepdim=True)[0])
        probs_l = F.dropout(scores_l.softmax(dim=-1), p=self.dropout, training=self.training)
        return self.out_l_proj(self._merge(torch.bmm(probs_l, value_v), l.shape[0]))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per sample (official DropPath; identity when p == 0 or at test time)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x * x.new_empty(shape).bernoulli_(keep) / keep


@register_fusion("MHA-B")
class BiAttentionFusion(nn.Module):
    """The MHA-B fusion block: all levels flattened into one sequence, one bi-directional attention, layer scale.

    Parameter names follow docs/architecture.md (official ``b_attn.*`` without the prefix). There is no FFN.
    """

    @configurable
    def __init__(
        self,
        *,
        v_dim: int,
        l_dim: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        layer_scale_init: float = 1.0 / 6,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
        stable_softmax_2d: bool = False,
        use_checkpoint: bool = False,
    ):
        """
        Args:
            v_dim / l_dim: image channels (DyHead channels) and text width.
            layer_scale_init: initial value of gamma_v and gamma_l (official 1 / NUM_CONVS).
            use_checkpoint: recompute the block in backward during training (saves the N x T attention maps).
        """
        super().__init__()
        self.v_dim = v_dim
        self.l_dim = l_dim
        self.drop_path = drop_path
        self.use_checkpoint = use_checkpoint
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(
            v_dim, l_dim, embed_dim, num_heads, dropout=dropout,
            clamp_min_for_underflow=clamp_min_for_underflow, clamp_max_for_overflow=clamp_max_for_overflow,
            stable_softmax_2d=stable_softmax_2d,
        )
        self.gamma_v = nn.Parameter(torch.full((v_dim,), float(layer_scale_init)))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), float(layer_scale_init)))

    @classmethod
    def from_config(cls, cfg) -> dict:
        f = cfg.MODEL.FUSION
        init = f.LAYER_SCALE_INIT if f.LAYER_SCALE_INIT > 0 else 1.0 / cfg.MODEL.DYHEAD.NUM_CONVS
        return {
            "v_dim": cfg.MODEL.DYHEAD.CHANNELS,
            "l_dim": cfg.MODEL.LANGUAGE.HIDDEN_DIM,
            "embed_dim": f.EMBED_DIM,
            "num_heads": f.NUM_HEADS,
            "dropout": f.DROPOUT,
            "drop_path": f.DROP_PATH,
            "layer_scale_init": init,
            "clamp_min_for_underflow": f.CLAMP_MIN_FOR_UNDERFLOW,
            "clamp_max_for_overflow": f.CLAMP_MAX_FOR_OVERFLOW,
            "stable_softmax_2d": f.STABLE_SOFTMAX_2D,
            "use_checkpoint": f.USE_CHECKPOINT,
        }

    def fuse_sequences(self, v: Tensor, l: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The block on flat sequences: v [B, N, v_dim], l [B, T, l_dim] -> same shapes."""
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(l)
        delta_v, delta_l = self.attn(v, l, attention_mask_l=mask)
        # Residual onto the normalised inputs (official detail 3): the un-normalised features are not carried through.
        v = v + _drop_path(self.gamma_v * delta_v, self.drop_path, self.training)
        l = l + _drop_path(self.gamma_l * delta_l, self.drop_path, self.training)
        return v, l

    def image_side(self, visual: list[Tensor]) -> tuple[list[Tensor], tuple[Tensor, Tensor]]:
        """Captioning's image half of the block: the normalised maps, not updated from the text (an image position
        that read the caption would carry later words to earlier tokens), and what the tokens read from them."""
        self._check_inputs(visual, None, None)
        sizes = [(x.shape[2], x.shape[3]) for x in visual]
        v = self.layer_norm_v(torch.cat([x.flatten(2).transpose(1, 2) for x in visual], dim=1))
        return self._unflatten(v, sizes), self.attn.image_keys(v)

    def text_side(self, hidden: Tensor, image_keys: tuple[Tensor, Tensor]) -> Tensor:
        """Captioning's text half: hidden [B*k, T, l_dim] (k captions per image, image-major) -> the fused text."""
        if hidden.dim() != 3 or hidden.shape[2] != self.l_dim:
            raise ValueError(f"hidden has shape {tuple(hidden.shape)}; expected [B, T, {self.l_dim}]")
        num_images = image_keys[0].shape[0] // self.attn.num_heads
        if hidden.shape[0] % num_images:
            raise ValueError(f"{hidden.shape[0]} captions cannot be split evenly over {num_images} images")
        l = self.layer_norm_l(hidden)
        stacked = l.reshape(num_images, -1, self.l_dim)
        delta = self.attn.text_update(stacked, image_keys).reshape(l.shape)
        return l + _drop_path(self.gamma_l * delta, self.drop_path, self.training)

    def image_update_parameters(self) -> list[nn.Parameter]:
        """Parameters only the image update uses (idle in captioning's image_side / text_side)."""
        a = self.attn
        return [self.gamma_v, *a.values_l_proj.parameters(), *a.out_v_proj.parameters()]

    @staticmethod
    def _unflatten(v: Tensor, sizes) -> list[Tensor]:
        """[B, sum(H*W), C] -> per-level [B, C, H, W], as views in channels-last memory (no copy: the DyConv that
        reads them next converts its inputs to channels-last anyway on the CPU)."""
        b, _, c = v.shape
        out, start = [], 0
        for h, w in sizes:
            out.append(v[:, start:start + h * w].view(b, h, w, c).permute(0, 3, 1, 2))
            start += h * w
        return out

    def _check_inputs(self, visual: list[Tensor], hidden: Tensor | None, mask: Tensor | None) -> None:
        if not isinstance(visual, (list, tuple)) or len(visual) == 0:
            raise ValueError("BiAttentionFusion expects a non-empty list of [B, C, H, W] feature maps.")
        bsz = visual[0].shape[0]
        for i, x in enumerate(visual):
            if x.dim() != 4 or x.shape[0] != bsz or x.shape[1] != self.v_dim:
                raise ValueError(
                    f"visual[{i}] has shape {tuple(x.shape)}; expected [{bsz}, {self.v_dim}, H, W] "
                    f"(MODEL.DYHEAD.CHANNELS = {self.v_dim})."
                )
        if hidden is not None and (hidden.dim() != 3 or hidden.shape[0] != bsz or hidden.shape[2] != self.l_dim):
            raise ValueError(
                f"lang['hidden'] has shape {tuple(hidden.shape)}; expected [{bsz}, T, {self.l_dim}] "
                f"(MODEL.LANGUAGE.HIDDEN_DIM = {self.l_dim})."
            )
        if mask is not None and hidden is not None and tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"lang['masks'] has shape {tuple(mask.shape)}; expected {tuple(hidden.shape[:2])}.")

    def forward(self, visual: list[Tensor], lang: dict[str, Tensor]) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Fuse every level with the text; returns the new maps and a copy of ``lang`` with the new "hidden"."""
        hidden = lang["hidden"]
        mask = lang.get("masks")
        self._check_inputs(visual, hidden, mask)
        sizes = [(x.shape[2], x.shape[3]) for x in visual]
        # Level-major, then row-major H x W: [B, sum(H*W), C].
        v = torch.cat([x.flatten(2).transpose(1, 2) for x in visual], dim=1)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            v, l = checkpoint(self.fuse_sequences, v, hidden, mask, use_reentrant=False)
        else:
            v, l = self.fuse_sequences(v, hidden, mask)
        new_lang = dict(lang)
        new_lang["hidden"] = l
        return self._unflatten(v, sizes), new_lang

    def extra_repr(self) -> str:
        return f"v_dim={self.v_dim}, l_dim={self.l_dim}, drop_path={self.drop_path}, checkpoint={self.use_checkpoint}"

