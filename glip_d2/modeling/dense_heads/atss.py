"""Adaptive Training Sample Selection, as GLIP's ``ATSSLossComputation.prepare_targets`` does it.

Per ground-truth box: take the ``topk`` anchors per level whose centres are closest to the box centre, set the
IoU threshold to mean + (unbiased) std of those candidates' "+1" IoUs, keep candidates at or above it whose
centre lies inside the box by more than 0.01 px; an anchor claimed by several boxes goes to the one it overlaps
most. Everything else is negative.
"""

import torch

from ...structures.legacy_boxes import legacy_pairwise_iou

__all__ = ["ATSSMatcher"]


class ATSSMatcher:
    """Assigns each anchor the index of its ground-truth box, or -1 (negative). Stateless."""

    #: Minimum distance (px) between an anchor centre and every side of its box, as official.
    INSIDE_EPS = 0.01

    def __init__(self, topk: int = 9, num_anchors_per_location: int = 1):
        if topk <= 0:
            raise ValueError(f"ATSS topk must be positive, got {topk}")
        self.topk = int(topk)
        self.num_anchors_per_location = int(num_anchors_per_location)

    def __call__(self, anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor) -> torch.Tensor:
        """``anchors_per_level``: [A_l, 4] legacy xyxy; ``gt_boxes``: [G, 4] legacy xyxy -> LongTensor [sum A_l]."""
        anchors = torch.cat(anchors_per_level, dim=0)
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        matched = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
        if num_gt == 0:
            return matched
        if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
            raise ValueError(f"gt_boxes must have shape [G, 4], got {tuple(gt_boxes.shape)}")
        gt_boxes = gt_boxes.to(anchors.dtype)
        ious = legacy_pairwise_iou(anchors, gt_boxes)  # [A, G]

        gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2.0
        distances = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

        candidates = []
        start = 0
        for level_anchors in anchors_per_level:
            end = start + level_anchors.shape[0]
            k = min(self.topk * self.num_anchors_per_location, end - start)
            if k > 0:
                _, idx = distances[start:end].topk(k, dim=0, largest=False)
                candidates.append(idx + start)
            start = end
        candidates = torch.cat(candidates, dim=0)  # [C, G]
        gt_range = torch.arange(num_gt, device=anchors.device)
        candidate_ious = ious[candidates, gt_range[None, :]]  # [C, G]
        threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # std: unbiased, as torch's default
        is_pos = candidate_ious >= threshold[None, :]

        cand_cx, cand_cy = anchor_centres[candidates, 0], anchor_centres[candidates, 1]  # [C, G]
        inside = torch.stack(
            (
                cand_cx - gt_boxes[None, :, 0],
                cand_cy - gt_boxes[None, :, 1],
                gt_boxes[None, :, 2] - cand_cx,
                gt_boxes[None, :, 3] - cand_cy,
            ),
            dim=0,
        ).min(dim=0).values > self.INSIDE_EPS
        is_pos &= inside

        # IoU where (anchor, gt) is a positive pair, -inf elsewhere; the best gt per anchor wins.
        pair_iou = torch.full_like(ious, float("-inf"))
        pos_anchor = candidates[is_pos]
        pos_gt = gt_range[None, :].expand_as(candidates)[is_pos]
        pair_iou[pos_anchor, pos_gt] = ious[pos_anchor, pos_gt]
        best_iou, best_gt = pair_iou.max(dim=1)
        matched = torch.where(best_iou == float("-inf"), matched, best_gt)
        return matched
