"""One extra BERT encoder layer on the fused text, with GLIP's fp16 clamps (official details 5, 15).

Parameter names are those of HF ``BertLayer`` (``attention.self.query`` ... ``output.LayerNorm``), so a state
dict moves between the two unchanged. Differences from vanilla BERT, in the official order
(``maskrcnn_benchmark/modeling/rpn/modeling_bert.py``): scores clamped to +-50000 after the 1/sqrt(d) scaling and
before the mask (switchable, MODEL.FUSION.CLAMP_BERTATTN); the intermediate output clamped before and after GELU;
the output clamped after dropout (before the residual LayerNorm) and after the LayerNorm (always on).
"""
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from ...layers.fp16_clamp import clamp_fp16_safe

__all__ = ["ClampedBertLayer", "extended_attention_mask"]


def extended_attention_mask(mask: Tensor, dtype: torch.dtype, causal: bool = False) -> Tensor:
    """[B, T] 0/1 mask -> additive [B, 1, 1, T]: 0 for tokens, ``finfo(dtype).min`` for padding.

    ``finfo.min`` is what current HF BERT (and HF >= 4.2x used with GLIP) builds; old HF used -10000. In fp32
    both give exactly zero attention to padding; finfo.min also stays "minus infinity" after adding clamped
    scores, so no padded token can ever receive weight, whatever the scores. Built in the parameter dtype as HF does.
    With ``causal`` the mask is [B, 1, T, T] and query t also masks every key after t (captioning). A token always
    sees itself: a row with no allowed key would otherwise spread its weight over every key, later ones included.
    """
    if causal:
        length = mask.shape[1]
        lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=mask.device)
        allowed = (mask.bool()[:, None, None, :] & lower) | eye
        return (~allowed).to(dtype) * torch.finfo(dtype).min
    m = mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, dropout: float, clamp_scores: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.clamp_scores = clamp_scores
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: Tensor, additive_mask: Tensor | None) -> Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.clamp_scores:
            scores = clamp_fp16_safe(scores)
        if additive_mask is not None:
            scores = scores + additive_mask
        probs = self.dropout(F.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class _SelfOutput(nn.Module):
    def __init__(self, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, dropout: float, eps: float, clamp_scores: bool):
        super().__init__()
        self.self = _SelfAttention(hidden, num_heads, dropout, clamp_scores)
        self.output = _SelfOutput(hidden, dropout, eps)

    def forward(self, x: Tensor, additive_mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, additive_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: Tensor) -> Tensor:
        return clamp_fp16_safe(F.gelu(clamp_fp16_safe(self.dense(x))))  # exact (erf) GELU, as BERT's "gelu"


class _Output(nn.Module):
    def __init__(self, intermediate: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        x = clamp_fp16_safe(self.dropout(self.dense(x)))
        return clamp_fp16_safe(self.LayerNorm(x + residual))


class ClampedBertLayer(nn.Module):
    """A freshly initialised BERT encoder layer (bert-base geometry scaled to the text width D).

    Heads = D / 64 and intermediate = 4 D, so D = 768 is exactly bert-base (12 heads, 3072) and D = 384 gives
    MiniLM-L6's geometry. Weights start from PyTorch's default init, as the official layer (it never calls
    HF's ``init_weights``); they are meant to be trained or loaded.
    """

    @configurable
    def __init__(
        self,
        *,
        hidden_dim: int,
        num_heads: int | None = None,
        intermediate_dim: int | None = None,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        clamp_attention: bool = True,
    ):
        super().__init__()
        if num_heads is None:
            if hidden_dim % 64 != 0:
                raise ValueError(f"text width {hidden_dim} is not a multiple of 64; give num_heads explicitly.")
            num_heads = hidden_dim // 64
        if hidden_dim % num_heads != 0:
            raise ValueError(f"text width {hidden_dim} is not divisible by num_heads={num_heads}.")
        intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.hidden_dim = hidden_dim
        self.attention = _Attention(hidden_dim, num_heads, dropout, layer_norm_eps, clamp_attention)
        self.intermediate = _Intermediate(hidden_dim, intermediate_dim)
        self.output = _Output(intermediate_dim, hidden_dim, dropout, layer_norm_eps)

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"hidden_dim": cfg.MODEL.LANGUAGE.HIDDEN_DIM, "clamp_attention": cfg.MODEL.FUSION.CLAMP_BERTATTN}

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """hidden_states: [B, T, D]; attention_mask: [B, T] with 1 = token, 0 = padding; ``causal``: token t
        attends to tokens <= t only (captioning; needs the mask). Returns [B, T, D]."""
        if causal and attention_mask is None:
            attention_mask = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.long)
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_dim:
            raise ValueError(
                f"hidden_states has shape {tuple(hidden_states.shape)}; expected [B, T, {self.hidden_dim}]."
            )
        additive = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(hidden_states.shape[:2]):
                expected = tuple(hidden_states.shape[:2])
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected {expected}.")
            additive = extended_attention_mask(attention_mask, self.attention.self.query.weight.dtype, causal)
        attn = self.attention(hidden_states, additive)
        return self.output(self.intermediate(attn), attn)
