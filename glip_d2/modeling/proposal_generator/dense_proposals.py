"""Proposals for the grounding ROI heads from the GLIP dense head's top boxes (MODEL.GLIP.PROPOSAL_SOURCE "dense").

As in the official two-stage path (the VLDyHead acting as RPN), the dense head's decoded boxes become the
proposals. Each anchor's objectness is its best category score in GLIP's own form, sqrt(mean token probability x
sigmoid(centerness)) (official detail 11), taken over the prompt's positive-map rows; then detectron2's
``find_top_rpn_proposals`` does the per-level top-k, clipping, NMS and final top-k exactly as its RPN does.
"""
from collections.abc import Sequence

import torch
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.structures import Instances

from ..dense_heads.postprocess import token_to_label_scores

__all__ = ["dense_head_proposals", "dense_objectness"]


def dense_objectness(
    token_logits: torch.Tensor, centerness_logits: torch.Tensor, positive_maps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """[B, A, L] token logits, [B, A] centerness logits -> [B, A] class-agnostic scores in [0, 1].

    score = max_k sqrt(mean_{t in row k} sigmoid(logit_t) * sigmoid(centerness)); a prompt without rows falls back
    to sqrt(sigmoid(centerness)) so that the boxes are still ranked.
    """
    if token_logits.dim() != 3 or centerness_logits.shape != token_logits.shape[:2]:
        raise ValueError(
            f"token logits must be [B, A, L] and centerness [B, A], got {tuple(token_logits.shape)} "
            f"and {tuple(centerness_logits.shape)}"
        )
    if len(positive_maps) != token_logits.shape[0]:
        raise ValueError(f"{len(positive_maps)} positive maps for {token_logits.shape[0]} images")
    ctr = centerness_logits.sigmoid()
    scores = []
    for probs, pm, c in zip(token_logits.sigmoid(), positive_maps, ctr):
        if pm.numel() == 0:
            best = torch.ones_like(c)
        else:
            best = token_to_label_scores(probs, pm.to(probs.device)).max(dim=1).values
        scores.append(torch.sqrt(best * c))
    return torch.stack(scores)


@torch.no_grad()
def dense_head_proposals(
    boxes: Sequence[torch.Tensor],
    token_logits: Sequence[torch.Tensor],
    centerness_logits: Sequence[torch.Tensor],
    positive_maps: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_box_size: float = 0.0,
    training: bool = False,
) -> list[Instances]:
    """Per-level decoded boxes [B, A_l, 4], token logits [B, A_l, L] and centerness logits [B, A_l] ->
    per-image ``Instances(proposal_boxes, objectness_logits)`` (no gradient), like detectron2's RPN output.
    """
    if not (len(boxes) == len(token_logits) == len(centerness_logits)) or len(boxes) == 0:
        raise ValueError("boxes, token_logits and centerness_logits need one (equal) entry per level")
    logits = []
    for b, t, c in zip(boxes, token_logits, centerness_logits):
        if b.shape[:2] != t.shape[:2] or b.shape[-1] != 4:
            raise ValueError(f"boxes {tuple(b.shape)} do not match token logits {tuple(t.shape)}")
        logits.append(torch.logit(dense_objectness(t, c, positive_maps), eps=1e-6))
    return find_top_rpn_proposals(
        [b.detach() for b in boxes], logits, list(image_sizes),
        nms_thresh, pre_nms_topk, post_nms_topk, min_box_size, training,
    )
