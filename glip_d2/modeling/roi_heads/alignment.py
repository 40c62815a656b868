"""Region–token alignment scores: the classifier of the two-stage grounding heads.

Same form as the dense head's dot product and the official ``VLMaskRCNNC4Predictor``
: text features are L2-normalised, halved and projected to the region width; the region side is used as is.
``logit[n, t] = q_n · proj(ē_t / 2) / exp(log_scale) + ē_t · bias_lang (+ bias0)``, clamped to ±50000.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.fp16_clamp import clamp_fp16_safe

__all__ = ["RegionTokenAlignment"]


class RegionTokenAlignment(nn.Module):
    """Scores every region (or mask pixel) against every token of its own prompt.

    ``prior_prob`` adds the scalar ``bias0 = -log((1 - p) / p)`` of the dense head; ``None`` leaves it out, as the
    official mask predictor does. ``text_init="msra"`` initialises the projection like the official mask predictor
    (kaiming-normal, fan-out, zero bias); ``"default"`` keeps ``nn.Linear``'s init, like the dense head.
    """

    def __init__(
        self,
        region_dim: int,
        text_dim: int,
        *,
        log_scale_init: float = 0.0,
        prior_prob: float | None = None,
        clamp: bool = True,
        text_init: str = "default",
    ):
        super().__init__()
        if region_dim <= 0 or text_dim <= 0:
            raise ValueError(f"region_dim and text_dim must be positive, got {region_dim} and {text_dim}")
        self.text_proj = nn.Linear(text_dim, region_dim, bias=True)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale_init)]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        if prior_prob is not None:
            if not 0.0 < prior_prob < 1.0:
                raise ValueError(f"prior_prob must lie in (0, 1), got {prior_prob}")
            self.bias0 = nn.Parameter(torch.tensor([-math.log((1.0 - prior_prob) / prior_prob)]))
        else:
            self.bias0 = None
        self.clamp = clamp
        if text_init == "msra":
            nn.init.kaiming_normal_(self.text_proj.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.text_proj.bias)
        elif text_init != "default":
            raise ValueError(f"text_init must be 'default' or 'msra', got {text_init!r}")
        self.region_dim = region_dim
        self.text_dim = text_dim

    def project_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, D] text features -> projected tokens [B, L, C] and per-token bias [B, L]."""
        if text.dim() != 3 or text.shape[-1] != self.text_dim:
            raise ValueError(f"text features must be [B, L, {self.text_dim}], got {tuple(text.shape)}")
        normed = F.normalize(text, p=2, dim=-1)
        tokens = self.text_proj(normed / 2.0)
        bias = torch.matmul(normed, self.bias_lang)
        if self.bias0 is not None:
            bias = bias + self.bias0
        return tokens, bias

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, token_bias: torch.Tensor) -> torch.Tensor:
        """[B, N, C] queries with ``project_text`` outputs [B, L, C], [B, L] -> logits [B, N, L]."""
        if queries.dim() != 3 or queries.shape[-1] != self.region_dim:
            raise ValueError(f"queries must be [B, N, {self.region_dim}], got {tuple(queries.shape)}")
        if tokens.shape[0] != queries.shape[0]:
            raise ValueError(f"{queries.shape[0]} query sets but {tokens.shape[0]} prompts")
        logits = torch.matmul(queries, tokens.transpose(-1, -2)) / self.log_scale.exp()
        logits = logits + token_bias[:, None, :]
        if self.clamp:
            logits = clamp_fp16_safe(logits)
        return logits
