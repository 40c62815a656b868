"""``GroundedVQAHead``: answers from the regions the question grounds to, not only from the fused question.

``VQAHead`` reads the fused question alone, so whatever it knows of the picture must have passed through the
tower's image-to-text attention. GLIPv2's point is that the model *grounds* the question: its dot-product head
already scores every region against every question token. This head uses that score directly (no official code
exists; the choices, and why):

* **region evidence per token**: a softmax over all regions (every FPN level) of the token's grounding logits
  weights the tower's region features into one vector per token ("triangle" -> the triangle's features, which carry
  its colour). Beside it, two numbers per token: the best logit (is it there at all: "is there a red star?") and
  ``log(1 + sum over regions of sigmoid(logit) * sigmoid(centerness))``, a soft count (ATSS puts several positive
  regions on each object, centerness favours their middles; "how many circles?").
* **token pooling**: each token's [fused text, projected region vector, evidence] is scored by a learned linear
  layer; a softmax over the question's tokens (the attention mask) pools them. The question decides which of its
  words matters: "triangle" in "what color is the triangle?". The masked mean of the fused text is concatenated as
  well, so the head can never know less than ``VQAHead``.
* **classifier and loss**: ``VQAHead``'s MLP and loss (BCE against soft scores times the number of answers).

The grounding logits keep their gradient: VQA fine-tuning may sharpen the grounding it reads (the kept detection
loss, MODEL.VQA.KEEP_DETECTION_LOSS, stops it drifting from boxes).
"""
import torch
from detectron2.config import configurable
from torch import nn

from .build import VL_HEAD_REGISTRY
from .vqa_head import VQAHead

__all__ = ["GroundedVQAHead", "region_evidence"]


def region_evidence(logits: list[torch.Tensor], centerness: list[torch.Tensor], features: list[torch.Tensor]):
    """Per token: the grounding-weighted region feature [B, T, C] and (best logit, soft count) [B, T, 2].

    ``logits`` per level [B, H*W, T] (the dot-product head's, row-major locations), ``centerness`` per level
    [B, 1, H, W], ``features`` per level [B, C, H, W] (the tower's visual output)."""
    logit = torch.cat(logits, dim=1).float()  # [B, N, T]
    regions = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1).float()  # [B, N, C]
    center = torch.cat([c.flatten(1) for c in centerness], dim=1).float()  # [B, N]
    if logit.shape[1] != regions.shape[1] or center.shape[1] != regions.shape[1]:
        raise ValueError(f"regions disagree across inputs: logits {logit.shape[1]}, features {regions.shape[1]}, "
                         f"centerness {center.shape[1]}")
    weights = logit.softmax(dim=1)  # over regions, per token
    pooled = torch.matmul(weights.transpose(1, 2), regions)  # [B, T, C]
    best = logit.max(dim=1).values
    count = torch.log1p((logit.sigmoid() * center.sigmoid().unsqueeze(-1)).sum(dim=1))
    return pooled, torch.stack([best, count], dim=-1)


@VL_HEAD_REGISTRY.register()
class GroundedVQAHead(VQAHead):
    """Fused question + the regions each token grounds to -> token attention pooling -> MLP (module docstring)."""

    reads_regions = True

    @configurable
    def __init__(self, *, input_dim: int, region_dim: int, num_answers: int, hidden_mult: float = 2.0,
                 pooling: str = "mean", dropout: float = 0.1, loss_weight: float = 1.0):
        token_dim = 2 * input_dim + 2
        super().__init__(input_dim=token_dim + input_dim, num_answers=num_answers, hidden_mult=hidden_mult,
                         pooling=pooling, dropout=dropout, loss_weight=loss_weight)
        self.region_proj = nn.Sequential(nn.Linear(region_dim, input_dim), nn.LayerNorm(input_dim))
        self.evidence_norm = nn.LayerNorm(2)
        self.token_score = nn.Linear(token_dim, 1)

    @classmethod
    def from_config(cls, cfg, num_answers: int):
        ret = super().from_config(cfg, num_answers)
        ret["region_dim"] = cfg.MODEL.DYHEAD.CHANNELS
        return ret

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, regions: dict | None = None) -> torch.Tensor:
        """Answer logits [B, num_answers]; ``regions`` = {"logits", "centerness", "features"} (``region_evidence``)."""
        if regions is None:
            raise ValueError("GroundedVQAHead needs the grounding head's outputs (regions=...); GLIPv2VQA passes them")
        pooled_regions, evidence = region_evidence(regions["logits"], regions["centerness"], regions["features"])
        width = evidence.shape[1]  # the head scores the first `width` token positions
        if width > hidden.shape[1]:
            raise ValueError(f"grounding logits cover {width} tokens, the fused text only {hidden.shape[1]}")
        text, token_mask = hidden[:, :width], mask[:, :width]
        tokens = torch.cat([text, self.region_proj(pooled_regions.to(text.dtype)),
                            self.evidence_norm(evidence.to(text.dtype))], dim=-1)
        score = self.token_score(tokens).squeeze(-1).masked_fill(token_mask == 0, float("-inf"))
        attended = (score.softmax(dim=1).unsqueeze(-1) * tokens).sum(dim=1)
        return self.mlp(torch.cat([attended, self.pool(hidden, mask)], dim=-1))
