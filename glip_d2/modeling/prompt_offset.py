"""Prompt tuning's learned offset: ``P = P0 + P_offset``, added to the prompt's text features per token position.

GLIP's prompt tuning (official ``language_prompt_v2``, ``MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER``) keeps every
weight of the model frozen and learns one vector per token *position*: a zero-initialised ``[1000, D]`` table whose
first ``L`` rows are added to both text outputs of the language encoder (``embedded`` and ``hidden``) before the
vision-language tower. Because the offset belongs to a position, a tuned offset is meaningful only for the prompt it
was tuned with (same names, same order, same separator): evaluation and the predictor rebuild exactly that prompt.

Starting at zero, the tuned model's first forward pass is the base model's, bit for bit.
"""
import torch
from torch import Tensor, nn

__all__ = ["PROMPT_OFFSET_POSITIONS", "PromptOffset"]

#: Rows of the official table (``Linear(D, 1000, bias=False).weight``): prompts up to 1000 tokens.
PROMPT_OFFSET_POSITIONS = 1000


class PromptOffset(nn.Module):
    """A ``[positions, dim]`` offset added to the first ``L`` positions of the text features."""

    def __init__(self, dim: int, positions: int = PROMPT_OFFSET_POSITIONS):
        super().__init__()
        if dim <= 0 or positions <= 0:
            raise ValueError(f"PromptOffset needs positive sizes, got dim={dim}, positions={positions}")
        self.weight = nn.Parameter(torch.zeros(positions, dim))

    def forward(self, lang: dict[str, Tensor]) -> dict[str, Tensor]:
        """A new dict with ``embedded`` and ``hidden`` offset (other entries unchanged)."""
        length = lang["hidden"].shape[1]
        if length > self.weight.shape[0]:
            raise ValueError(
                f"the prompt has {length} token positions but the prompt offset has {self.weight.shape[0]} rows"
            )
        if lang["hidden"].shape[-1] != self.weight.shape[1]:
            raise ValueError(
                f"text features are {lang['hidden'].shape[-1]}-d but the prompt offset is {self.weight.shape[1]}-d"
            )
        offset = self.weight[:length].unsqueeze(0)
        out = dict(lang)
        out["embedded"] = lang["embedded"] + offset.to(lang["embedded"].dtype)
        out["hidden"] = lang["hidden"] + offset.to(lang["hidden"].dtype)
        return out
