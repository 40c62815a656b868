"""GLIPv2's masked language modelling during grounding pre-training: token corruption, prediction head, loss.

Why: predicting masked words from the image-conditioned (fused) text features makes the language side learn from
the image, and gives caption-only data a training signal. Masking follows the official GLIP code's switched-off
``random_word``: every non-padding position (special tokens included) is chosen with probability ``mask_prob``;
a chosen token becomes [MASK] 80% of the time, a uniformly random vocabulary id 10%, and stays 10%. A per-sample
*greenlight* map says where the loss is counted (1), where a token may be corrupted but carries no loss (0) and
where nothing may be touched (-1; a row of -1 is the official "no MLM for this sample" sentinel).
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

__all__ = ["IGNORE_INDEX", "LMPredictionHead", "mask_tokens", "masked_token_accuracy", "mlm_loss"]

#: Label of positions that carry no MLM loss (cross-entropy's ignore_index, as in BERT).
IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    greenlight: torch.Tensor | None,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Sequence[int] = (),
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
    only_positives: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted ids [B, L] and labels [B, L] (original id where the loss counts, -100 elsewhere).

    ``attention_mask`` [B, L]: 0 = padding, never chosen. ``greenlight`` [B, L] (1 / 0 / -1, see the module
    docstring) is used only with ``only_positives`` (official ``MLM_LOSS_FOR_ONLY_POSITIVES``); without it the map
    is ignored entirely, sentinel included, and every chosen token carries loss, as in the official code.
    ``special_ids``: ids never chosen. The official code chooses [CLS] and [SEP] like any other token, so the
    default is empty; pass the tokenizer's special ids for BERT-style masking. Random replacements are drawn
    uniformly from ``[0, vocab_size)`` (the official code draws from the whole vocabulary, special ids included).
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be [B, L]")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")
    use_greenlight = only_positives and greenlight is not None
    if use_greenlight and greenlight.shape != input_ids.shape:
        raise ValueError(f"greenlight {tuple(greenlight.shape)} must match input_ids {tuple(input_ids.shape)}")
    device = input_ids.device
    gen_device = generator.device if generator is not None else device

    # one uniform draw per position decides both "chosen" (u < p) and the 80/10/10 outcome (u / p), as official
    draw = torch.rand(input_ids.shape, generator=generator, device=gen_device).to(device)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=gen_device).to(device)
    maskable = attention_mask.bool()
    if special_ids:
        maskable = maskable & ~torch.isin(input_ids, torch.as_tensor(list(special_ids), device=device))
    if use_greenlight:
        maskable = maskable & (greenlight.to(device) != -1)
    chosen = maskable & (draw < mask_prob)
    outcome = draw / mask_prob if mask_prob > 0 else draw
    masked_ids = input_ids.clone()
    masked_ids[chosen & (outcome < 0.8)] = mask_token_id
    replace = chosen & (outcome >= 0.8) & (outcome < 0.9)
    masked_ids[replace] = random_ids[replace]

    carries_loss = chosen & (greenlight.to(device) == 1) if use_greenlight else chosen
    labels = torch.where(carries_loss, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked_ids, labels


class _PredictionTransform(nn.Module):
    """dense -> activation -> LayerNorm, named as BERT's ``BertPredictionHeadTransform`` so weights load by name."""

    def __init__(self, hidden: int, hidden_act, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.transform_act_fn = ACT2FN[hidden_act] if isinstance(hidden_act, str) else hidden_act
        self.LayerNorm = nn.LayerNorm(hidden, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class LMPredictionHead(nn.Module):
    """BERT's MLM head: dense -> activation -> LayerNorm, then an untied ``Linear(hidden -> vocab)`` with bias.

    Built from any BERT-like config (``hidden_size``, ``hidden_act``, ``layer_norm_eps``, ``vocab_size``).
    Written here rather than taken from ``transformers``: its ``BertLMPredictionHead`` changed layout across
    releases (recent ones keep a second, unused ``bias`` parameter beside ``decoder.bias``, which breaks DDP's
    unused-parameter check). Attribute names follow BERT (``transform.dense``, ``transform.LayerNorm``,
    ``decoder``); a checkpoint's separate ``bias`` key (official GLIP, BERT's ``cls.predictions``) loads into
    ``decoder.bias``. Freshly initialised as the official head (PyTorch defaults, zero output bias).
    """

    def __init__(self, config):
        super().__init__()
        hidden, vocab = int(config.hidden_size), int(config.vocab_size)
        self.transform = _PredictionTransform(hidden, config.hidden_act, float(config.layer_norm_eps))
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.zeros_(self.decoder.bias)
        self.vocab_size = vocab

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> vocabulary logits [..., vocab]. Run it on the labelled positions only to save memory."""
        return self.decoder(self.transform(hidden_states))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        legacy_bias = prefix + "bias"
        if legacy_bias in state_dict:
            bias = state_dict.pop(legacy_bias)
            state_dict.setdefault(prefix + "decoder.bias", bias)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions; 0 (still connected to ``logits``) when nothing is labelled,
    where the official ``CrossEntropyLoss`` would return NaN. ``logits`` [..., V], ``labels`` [...]."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    labelled = flat_labels != IGNORE_INDEX
    if not bool(labelled.any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits[labelled].float(), flat_labels[labelled])


@torch.no_grad()
def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of labelled positions whose arg-max prediction is right (0 when nothing is labelled), for logging."""
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any()):
        return logits.new_zeros(())
    return (logits.argmax(dim=-1)[labelled] == labels[labelled]).float().mean()
