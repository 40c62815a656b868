"""GLIPv2's two extra pre-training objectives, wired between the batch and the GLIP meta-architecture.

Why a module of its own: the meta-architecture keeps GLIP's data flow and calls three things from here, all of them
training-only (inference never touches them):

1. :meth:`GLIPv2Objectives.mask_input_ids`, with MLM on: the batch's token ids are corrupted with the mapper's
   greenlight maps *before* the language encoder, so that every loss, grounding included, sees the masked text
   (as the official code does);
2. ``GLIPLoss.match`` runs the ATSS assignment once when the region-word loss needs it too;
3. :meth:`GLIPv2Objectives.forward`: ``loss_mlm`` (BERT's LM head on the fused text of the last tower block) and
   ``loss_region_word_contrastive`` (pre-fusion FPN features at the ATSS-positive anchors against the words of every
   prompt of the batch, gathered across processes).

Both trainable parts live under the meta-architecture's ``glipv2`` attribute, so a GLIP checkpoint starts GLIPv2
pre-training with exactly the keys under :data:`GLIPV2_STATE_PREFIX` initialised fresh (``GLIPCheckpointer``).
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mlm import IGNORE_INDEX, LMPredictionHead, mask_tokens, masked_token_accuracy, mlm_loss
from .region_word_contrastive import (
    RegionWordContrastiveLoss,
    flatten_anchor_features,
    region_inputs_from_anchors,
    select_region_word_anchors,
)

__all__ = ["GLIPV2_STATE_PREFIX", "GLIPv2Objectives", "REGION_FEATURES", "TEXT_FEATURES", "build_glipv2_objectives"]

#: State-dict prefix of every GLIPv2 parameter (the meta-architecture's ``glipv2`` attribute).
GLIPV2_STATE_PREFIX = "glipv2."
#: MODEL.GLIPV2.REGION_WORD.FEATURE values that are built.
REGION_FEATURES = ("fpn",)
#: MODEL.GLIPV2.REGION_WORD.TEXT_FEATURES: "fused" = the text the dot-product head reads, "encoder" = pre-fusion.
TEXT_FEATURES = ("fused", "encoder")


def _fit_width(rows: torch.Tensor, length: int, fill) -> torch.Tensor:
    """Last dim cut or padded (with ``fill``) to ``length``: mapper maps are MAX_QUERY_LEN wide, the batch's token
    length is shorter without PAD_MAX."""
    if rows.shape[-1] >= length:
        return rows[..., :length]
    return F.pad(rows, (0, length - rows.shape[-1]), value=fill)


def _per_image(batched_inputs: Sequence[dict], key: str, length: int, fill, dtype, device, why: str) -> torch.Tensor:
    missing = [i for i, x in enumerate(batched_inputs) if key not in x]
    if missing:
        raise ValueError(
            f"{why} needs '{key}' in each input dict (images {missing} lack it); GroundingDatasetMapper adds it "
            "in training when MODEL.GLIPV2.MLM / REGION_WORD is enabled"
        )
    return torch.stack([
        _fit_width(torch.as_tensor(x[key]).to(device=device, dtype=dtype), length, fill) for x in batched_inputs
    ])


def _box_categories(gt_maps: torch.Tensor, token_categories: torch.Tensor) -> torch.Tensor:
    """[G]: the category id of the tokens each box is grounded to (-1 for none). For detection prompts these are
    the boxes' ``gt_classes``; grounding captions have no token categories, so their boxes have none either."""
    if gt_maps.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=gt_maps.device)
    spread = torch.where(gt_maps > 0, token_categories[None, :], torch.full_like(token_categories, -1)[None, :])
    return spread.max(dim=1).values


class GLIPv2Objectives(nn.Module):
    """MLM head and region-word loss (either may be None) plus the glue to the batch; see the module docstring."""

    def __init__(
        self,
        *,
        mlm_head: LMPredictionHead | None = None,
        region_word: RegionWordContrastiveLoss | None = None,
        mask_token_id: int | None = None,
        mask_prob: float = 0.15,
        only_positives: bool = True,
        mlm_loss_weight: float = 1.0,
        text_features: str = "fused",
    ):
        super().__init__()
        if mlm_head is None and region_word is None:
            raise ValueError("GLIPv2Objectives needs the MLM head, the region-word loss or both")
        if mlm_head is not None and mask_token_id is None:
            raise ValueError("MLM needs the tokenizer's [MASK] id")
        if text_features not in TEXT_FEATURES:
            raise ValueError(f"MODEL.GLIPV2.REGION_WORD.TEXT_FEATURES must be one of {TEXT_FEATURES}, got {text_features!r}")
        self.mlm_head = mlm_head
        self.region_word = region_word
        self.mask_token_id = mask_token_id
        self.mask_prob = float(mask_prob)
        self.only_positives = bool(only_positives)
        self.mlm_loss_weight = float(mlm_loss_weight)
        self.text_features = text_features

    @property
    def needs_matching(self) -> bool:
        """Whether ``forward`` needs the ATSS assignment (the region-word loss does)."""
        return self.region_word is not None

    def mask_input_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batched_inputs: Sequence[dict]):
        """(ids the language encoder reads, MLM labels [B, L] or None). Without MLM the ids are returned as is."""
        if self.mlm_head is None:
            return input_ids, None
        greenlight = None
        if self.only_positives:
            greenlight = _per_image(batched_inputs, "greenlight_map", input_ids.shape[1], 0.0, torch.float32,
                                    input_ids.device, "MLM with MODEL.GLIPV2.MLM.ONLY_POSITIVES")
        return mask_tokens(
            input_ids, attention_mask, greenlight, self.mlm_head.vocab_size, self.mask_token_id,
            mask_prob=self.mask_prob, only_positives=self.only_positives,
        )

    def forward(
        self,
        *,
        features: Sequence[torch.Tensor],
        lang: dict,
        lang_out: dict,
        head_text: torch.Tensor,
        mlm_labels: torch.Tensor | None,
        matched_idxs: Sequence[torch.Tensor] | None,
        gt_maps: Sequence[torch.Tensor],
        batched_inputs: Sequence[dict],
    ) -> dict[str, torch.Tensor]:
        """``loss_mlm`` / ``loss_region_word_contrastive``.

        ``features``: the pre-fusion FPN levels; ``lang`` / ``lang_out``: the language encoder's and the tower's
        text dicts; ``head_text``: what the dot-product head read; ``mlm_labels`` from :meth:`mask_input_ids`;
        ``matched_idxs``: ``GLIPLoss.match`` per image; ``gt_maps``: the boxes' token maps per image.
        """
        losses = {}
        if self.mlm_head is not None:
            if mlm_labels is None:
                raise ValueError("MLM is on but no labels were given: call mask_input_ids before the encoder")
            losses["loss_mlm"] = self._mlm(lang_out["hidden"], mlm_labels, lang.get("input_ids"))
        if self.region_word is not None:
            if matched_idxs is None:
                raise ValueError("the region-word loss needs the ATSS assignment (GLIPLoss.match)")
            text = head_text if self.text_features == "fused" else lang["embedded"]
            losses["loss_region_word_contrastive"] = self._region_word(
                features, text, lang["masks"], matched_idxs, gt_maps, batched_inputs
            )
        return losses

    def _mlm(self, hidden: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy of the LM head on the labelled positions only (the vocabulary projection is large).

        Logs ``mlm_accuracy`` over every labelled position (BERT's measure) and ``mlm_accuracy_mask_token`` over
        those fed [MASK]: the 10 % kept unchanged can be copied from the input, the [MASK] ones cannot.
        """
        labelled = labels != IGNORE_INDEX
        logits = self.mlm_head(hidden[labelled])
        targets = labels[labelled]
        if targets.numel():
            _put_scalar("mlm_accuracy", masked_token_accuracy(logits, targets))
            if input_ids is not None:
                fed_mask = input_ids[labelled] == self.mask_token_id
                if fed_mask.any():
                    _put_scalar("mlm_accuracy_mask_token", masked_token_accuracy(logits[fed_mask], targets[fed_mask]))
        return mlm_loss(logits, targets) * self.mlm_loss_weight

    def _region_word(self, features, text, token_mask, matched_idxs, gt_maps, batched_inputs) -> torch.Tensor:
        num_tokens = token_mask.shape[1]
        token_categories = _per_image(batched_inputs, "token_category_ids", num_tokens, -1, torch.long,
                                      token_mask.device, "the region-word loss")
        selections = []
        for matched, maps, categories in zip(matched_idxs, gt_maps, token_categories):
            maps = _fit_width(maps.to(token_mask.device), num_tokens, 0)
            selections.append(select_region_word_anchors(
                matched, maps, _box_categories(maps, categories), self.region_word.max_positive_anchors
            ))
        return self.region_word(
            **region_inputs_from_anchors(flatten_anchor_features(features), selections),
            token_features=text, token_mask=token_mask, token_category_ids=token_categories,
        )


def _put_scalar(name: str, value: torch.Tensor) -> None:
    """Log to detectron2's EventStorage when one is open (training); silently nothing otherwise."""
    from detectron2.utils.events import get_event_storage

    try:
        storage = get_event_storage()
    except AssertionError:  # no storage: a plain forward outside a trainer
        return
    storage.put_scalar(name, float(value))


def build_glipv2_objectives(cfg, language_encoder: nn.Module) -> GLIPv2Objectives | None:
    """The objectives MODEL.GLIPV2 asks for, or None when both are off (a plain GLIP model).

    The LM head is built from the language encoder's HF config (vocabulary, width, activation), so any BERT-family
    encoder of the registry works; the region-word projections read MODEL.DYHEAD.CHANNELS-wide FPN features and
    MODEL.LANGUAGE.HIDDEN_DIM-wide words.
    """
    v2 = cfg.MODEL.GLIPV2
    if not (v2.MLM.ENABLED or v2.REGION_WORD.ENABLED):
        return None
    mlm_head, mask_token_id = None, None
    if v2.MLM.ENABLED:
        config = getattr(getattr(language_encoder, "model", None), "config", None)
        tokenizer = getattr(language_encoder, "tokenizer", None)
        if config is None or getattr(config, "vocab_size", None) is None or tokenizer is None:
            raise ValueError(
                f"MODEL.GLIPV2.MLM needs a language encoder with an HF config (.model.config) and a tokenizer; "
                f"{type(language_encoder).__name__} has none"
            )
        mask_token_id = tokenizer.mask_token_id
        if mask_token_id is None:
            raise ValueError(f"MODEL.GLIPV2.MLM: the tokenizer of {cfg.MODEL.LANGUAGE.MODEL_NAME!r} has no [MASK] token")
        if config.hidden_size != cfg.MODEL.LANGUAGE.HIDDEN_DIM:
            raise ValueError(f"the LM head reads {cfg.MODEL.LANGUAGE.HIDDEN_DIM}-d text but the text model is "
                             f"{config.hidden_size}-d (MODEL.LANGUAGE.HIDDEN_DIM)")
        mlm_head = LMPredictionHead(config)
    region_word = None
    rw = v2.REGION_WORD
    if rw.ENABLED:
        if rw.FEATURE not in REGION_FEATURES:
            raise ValueError(f"MODEL.GLIPV2.REGION_WORD.FEATURE must be one of {REGION_FEATURES}, got {rw.FEATURE!r}")
        region_word = RegionWordContrastiveLoss(
            region_in_dim=cfg.MODEL.DYHEAD.CHANNELS,
            token_in_dim=cfg.MODEL.LANGUAGE.HIDDEN_DIM,
            embed_dim=rw.EMBED_DIM,
            log_scale_init=rw.LOG_SCALE_INIT,
            loss_weight=rw.LOSS_WEIGHT,
            max_positive_anchors=rw.MAX_POSITIVE_ANCHORS,
            zero_pads=rw.ZERO_PADS,
            gather_with_grad=rw.GATHER_WITH_GRAD,
        )
    return GLIPv2Objectives(
        mlm_head=mlm_head,
        region_word=region_word,
        mask_token_id=mask_token_id,
        mask_prob=v2.MLM.MASK_PROB,
        only_positives=v2.MLM.ONLY_POSITIVES,
        mlm_loss_weight=v2.MLM.LOSS_WEIGHT,
        text_features=rw.TEXT_FEATURES,
    )
