"""GLIP inference post-processing (official details 7, 11, 12).

Token probabilities become label scores through the prompt's positive map (mean of the probabilities of each
label's tokens, for any number of labels), candidates are thresholded *before* the centerness multiply, the top
``pre_nms_top_n`` per level are decoded, scored ``sqrt(cls * ctr)``, clipped with pixel-index bounds, then
class-aware NMS with "+1" IoU keeps at most ``detections_per_image`` (k-th score rule; ties may exceed it).
"""
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from ...structures.legacy_boxes import legacy_clip, legacy_pairwise_iou
from .box_coder import GLIPBoxCoder

__all__ = ["token_to_label_scores", "legacy_batched_nms", "GLIPPostProcessor"]


def token_to_label_scores(token_probs: torch.Tensor, positive_map: torch.Tensor) -> torch.Tensor:
    """Mean token probability per label: ``token_probs`` [N, L] x binary ``positive_map`` [K, L'] -> [N, K].

    The positive map may be wider than the tokenized caption (MAX_QUERY_LEN columns) as long as the extra
    columns are empty. Labels without any token get score 0 (never detected).
    """
    num_tokens = token_probs.shape[-1]
    pm = (positive_map > 0).to(token_probs.dtype)
    if pm.dim() != 2:
        raise ValueError(f"positive_map must be [K, L], got {tuple(positive_map.shape)}")
    if pm.shape[1] > num_tokens:
        if pm[:, num_tokens:].any():
            raise ValueError(f"positive_map marks token positions >= {num_tokens}, beyond the tokenized caption")
        pm = pm[:, :num_tokens]
    elif pm.shape[1] < num_tokens:
        pm = F.pad(pm, (0, num_tokens - pm.shape[1]))
    counts = pm.sum(dim=1)
    return torch.matmul(token_probs, pm.t()) / counts.clamp(min=1)[None, :]


def _nms_single_label(boxes: torch.Tensor, iou_threshold: float, block: int = 2048) -> np.ndarray:
    """Greedy NMS on boxes already sorted by decreasing score; returns kept positions (sorted)."""
    n = boxes.shape[0]
    suppress = np.zeros((n, n), dtype=bool)
    for start in range(0, n, block):
        rows = legacy_pairwise_iou(boxes[start : start + block], boxes) > iou_threshold
        suppress[start : start + block] = rows.cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed[i + 1 :] |= suppress[i, i + 1 :]
    return np.asarray(keep, dtype=np.int64)


def legacy_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS as GLIP's ``ml_nms``: "+1" IoU, suppress when IoU > threshold, only within a label.

    The IoU uses the CUDA kernel's float arithmetic order, so decisions at IoU == threshold match it (torchvision's
    ``batched_nms`` has no "+1" and keeps a different set). Returns kept indices by decreasing score
    (equal scores keep their input order).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    sorted_labels = labels[order]
    for label in torch.unique(sorted_labels):
        idx = order[sorted_labels == label]
        kept = torch.from_numpy(_nms_single_label(boxes[idx], iou_threshold)).to(boxes.device)
        keep.append(idx[kept])
    keep = torch.cat(keep)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


class GLIPPostProcessor:
    """Turns head outputs + per-image positive maps into detections in resized-image coordinates. Stateless."""

    @configurable
    def __init__(
        self,
        *,
        box_coder: GLIPBoxCoder,
        score_threshold: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        min_size: float = 0.0,
    ):
        self.box_coder = box_coder
        self.score_threshold = score_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.min_size = min_size

    @classmethod
    def from_config(cls, cfg, box_coder: GLIPBoxCoder | None = None):
        return {
            "box_coder": box_coder or GLIPBoxCoder(cfg.MODEL.ATSS.BBOX_REG_WEIGHTS),
            "score_threshold": cfg.MODEL.ATSS.INFERENCE_TH,
            "pre_nms_top_n": cfg.MODEL.ATSS.PRE_NMS_TOP_N,
            "nms_threshold": cfg.MODEL.ATSS.NMS_TH,
            "detections_per_image": cfg.MODEL.ATSS.DETECTIONS_PER_IMG,
        }

    def __call__(
        self,
        box_regression: list[torch.Tensor],
        centerness: list[torch.Tensor],
        dot_product_logits: list[torch.Tensor],
        anchors: list[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        positive_maps: Sequence[torch.Tensor],
        return_pre_nms: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Per level: [B,4,H,W], [B,1,H,W], [B,HW,L], anchors [HW,4]; ``image_sizes`` (h, w) of the unpadded
        resized images; ``positive_maps`` [K_i, L] per image. Returns per image ``boxes`` [N,4] (legacy xyxy),
        ``scores`` [N], ``labels`` [N] (row of the positive map), and ``pre_nms`` (same fields) when asked.
        """
        num_images = box_regression[0].shape[0]
        if len(image_sizes) != num_images or len(positive_maps) != num_images:
            raise ValueError(
                f"{num_images} images but {len(image_sizes)} sizes and {len(positive_maps)} positive maps"
            )
        results = []
        for i in range(num_images):
            levels = [
                self._candidates(
                    box_regression[l][i], centerness[l][i], dot_product_logits[l][i], anchors[l],
                    image_sizes[i], positive_maps[i],
                )
                for l in range(len(box_regression))
            ]
            boxes = torch.cat([c[0] for c in levels])
            scores = torch.cat([c[1] for c in levels])
            labels = torch.cat([c[2] for c in levels])
            result = self._select(boxes, scores, labels)
            if return_pre_nms:
                result["pre_nms"] = {"boxes": boxes, "scores": scores, "labels": labels}
            results.append(result)
        return results

    def _candidates(self, box_reg, ctr, logits, anchors, image_size, positive_map):
        """Thresholded, top-k, decoded and clipped candidates of one level of one image."""
        scores = token_to_label_scores(logits.sigmoid(), positive_map.to(logits.device))  # [HW, K]
        candidate = scores > self.score_threshold  # before centerness (official detail 11)
        num_keep = min(int(candidate.sum()), self.pre_nms_top_n)
        scores = scores * ctr.reshape(-1).sigmoid()[:, None]
        cand_scores, top = scores[candidate].topk(num_keep, sorted=False)
        loc, label = candidate.nonzero()[top].unbind(dim=1)
        deltas = box_reg.permute(1, 2, 0).reshape(-1, 4)[loc]
        boxes = self.box_coder.decode(deltas, anchors[loc])
        boxes = legacy_clip(boxes, int(image_size[0]), int(image_size[1]))
        widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        keep = (widths >= self.min_size) & (heights >= self.min_size)
        return boxes[keep], torch.sqrt(cand_scores[keep]), label[keep]

    def _select(self, boxes, scores, labels) -> dict[str, torch.Tensor]:
        """Class-aware NMS, then the k-th largest score as the cut so at most ``detections_per_image`` remain.
        A threshold <= 0 skips NMS and a cap <= 0 keeps all (official ml_nms; test-time augmentation wants both)."""
        if self.nms_threshold <= 0:
            keep = torch.sort(scores, descending=True, stable=True).indices
        else:
            keep = legacy_batched_nms(boxes, scores, labels, self.nms_threshold)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        n, k = scores.shape[0], self.detections_per_image
        if n > k > 0:
            kth = torch.kthvalue(scores.detach().cpu().float(), n - k + 1).values.item()
            keep = scores >= kth
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return {"boxes": boxes, "scores": scores, "labels": labels}
