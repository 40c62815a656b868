"""``VQAHead``: GLIPv2's VQA head on the fused question tokens -> logits over an answer vocabulary.

GLIPv2 (§3-§4) answers questions from the *grounded* language features: the question is the prompt, each tower
block fuses it with the image (region<->word attention), and a task head reads the fused text of the last block.
No official code exists; the choices here, and why:

* **pooling** (MODEL.VQA.POOLING): ``"mean"`` (default) = the mean of the fused features over the question's tokens
  (the attention mask, [CLS]/[SEP] included); ``"cls"`` = the [CLS] position. GLIP's pre-training supervises every
  *word* position through region-word grounding (and GLIPv2's MLM), but no loss ever reads [CLS], so in a GLIP
  checkpoint [CLS] is an untrained summary while every word carries image evidence; the masked mean uses all of it
  and is the usual choice when the encoder had no sentence-level objective. "cls" is there for checkpoints
  pre-trained with one (BERT-style VLP), where it is the convention.
* **MLP**: Linear(D, 2D) -> GELU -> LayerNorm -> Dropout -> Linear(2D, answers), the classifier of the common
  VQA heads on BERT-style encoders (hidden 2x, MODEL.VQA.HIDDEN_MULT).
* **loss**: binary cross-entropy with logits against the soft scores (each answer's official leave-one-out
  accuracy, ``glip_d2.data.datasets.vqa``), averaged over the batch and answers, times the number of answers
  (VQA v2 practice: the sum over answers, so the gradient per answer does not shrink with a 3129-way vocabulary).
  Inference returns ``sigmoid(logits)``: each answer's predicted accuracy.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .build import VL_HEAD_REGISTRY

__all__ = ["POOLINGS", "VQAHead", "dense_answer_targets"]

#: MODEL.VQA.POOLING values.
POOLINGS = ("mean", "cls")


def dense_answer_targets(answer_ids: Sequence[torch.Tensor], answer_scores: Sequence[torch.Tensor], num_answers: int,
                         device=None) -> torch.Tensor:
    """[B, num_answers] soft scores from each sample's sparse (ids, scores); unlisted answers score 0."""
    targets = torch.zeros((len(answer_ids), num_answers), dtype=torch.float32, device=device)
    for i, (ids, scores) in enumerate(zip(answer_ids, answer_scores)):
        ids = torch.as_tensor(ids, dtype=torch.long, device=device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_answers):
            raise ValueError(f"sample {i}: answer ids {ids.tolist()} outside the {num_answers}-answer vocabulary")
        targets[i, ids] = torch.as_tensor(scores, dtype=torch.float32, device=device)
    return targets


@VL_HEAD_REGISTRY.register()
class VQAHead(nn.Module):
    """Pooled fused question -> 2-layer MLP -> answer logits; ``losses`` gives ``loss_vqa`` (module docstring)."""

    @configurable
    def __init__(self, *, input_dim: int, num_answers: int, hidden_mult: float = 2.0, pooling: str = "mean",
                 dropout: float = 0.1, loss_weight: float = 1.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"MODEL.VQA.POOLING must be one of {POOLINGS}, got {pooling!r}")
        if num_answers < 1:
            raise ValueError(f"the VQA head needs at least one answer, got num_answers={num_answers}")
        hidden = int(round(input_dim * hidden_mult))
        self.pooling = pooling
        self.num_answers = int(num_answers)
        self.loss_weight = float(loss_weight)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Dropout(dropout),
            nn.Linear(hidden, num_answers),
        )

    @classmethod
    def from_config(cls, cfg, num_answers: int):
        v = cfg.MODEL.VQA
        return {"input_dim": cfg.MODEL.LANGUAGE.HIDDEN_DIM, "num_answers": num_answers, "hidden_mult": v.HIDDEN_MULT,
                "pooling": v.POOLING, "dropout": v.DROPOUT, "loss_weight": v.LOSS_WEIGHT}

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D] fused text + [B, L] attention mask -> [B, D] question representation."""
        if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(f"fused text {tuple(hidden.shape)} and mask {tuple(mask.shape)} must be [B, L, D] / [B, L]")
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    #: False: the meta-architecture passes no region inputs (``GroundedVQAHead`` reads them).
    reads_regions = False

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Answer logits [B, num_answers]."""
        return self.mlp(self.pool(hidden, mask))

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_vqa``: BCE with logits vs soft scores, mean over batch and answers, times the number of answers."""
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * logits.shape[1]
        return {"loss_vqa": loss * self.loss_weight}
