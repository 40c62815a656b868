"""GLIP's detection selection after the exported graph, in NumPy: class-aware "+1" NMS and the k-th score cut.

Why outside the graph: ONNX ``NonMaxSuppression`` measures IoU on continuous boxes. Feeding it legacy boxes shifted
by ``x2 + 1, y2 + 1`` gives the "+1" IoU in exact arithmetic (intersection ``min(x2) + 1 - max(x1)``, area
``(x2 + 1 - x1)(y2 + 1 - y1)``, zero overlap exactly when the legacy one is zero), but not in float32: ``x2 + 1``
rounds (1023.99997 + 1 needs a coarser step), ONNX Runtime computes ``(x2 + 1) - x1`` where GLIP computes
``(x2 - x1) + 1``, and its order among equal scores is its own. A decision at IoU == threshold or between tied
scores could then differ from the PyTorch model. This module repeats ``legacy_batched_nms`` and
``GLIPPostProcessor._select`` operation for operation in float32 (the same IEEE results, so the same decisions),
and a deployment in another language has a 40-line reference to port (docs/export.md).
"""
import numpy as np

__all__ = ["legacy_iou_np", "legacy_nms_np", "select_detections_np"]


def legacy_iou_np(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [N, 4], "+1" widths, in ``legacy_pairwise_iou``'s float32 operation order."""
    one = np.float32(1)
    area1 = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    area2 = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    lt = np.maximum(box[None, :2], boxes[:, :2])
    rb = np.minimum(box[None, 2:], boxes[:, 2:])
    wh = np.maximum(rb - lt + one, np.float32(0))
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area1 + area2 - inter)


def _stable_descending(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, equal scores in input order (``torch.sort(descending=True, stable=True)``)."""
    return np.argsort(-scores, kind="stable")


def legacy_nms_np(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``legacy_batched_nms``: greedy per label, suppress when "+1" IoU > threshold; kept indices by decreasing
    score (ties in the order of the labels, then of the input)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels)
    if boxes.ndim != 2 or boxes.shape[1:] != (4,) or scores.shape != (len(boxes),) or labels.shape != scores.shape:
        raise ValueError(f"boxes [N, 4], scores [N], labels [N] expected, got {boxes.shape}, {scores.shape}, "
                         f"{labels.shape}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    threshold = np.float32(iou_threshold)
    order = _stable_descending(scores)
    sorted_labels = labels[order]
    keep = []
    for label in np.unique(sorted_labels):
        idx = order[sorted_labels == label]
        b = boxes[idx]
        removed = np.zeros(len(idx), dtype=bool)
        for i in range(len(idx)):
            if removed[i]:
                continue
            keep.append(idx[i])
            removed[i + 1 :] |= legacy_iou_np(b[i], b[i + 1 :]) > threshold
    keep = np.asarray(keep, dtype=np.int64)
    return keep[_stable_descending(scores[keep])]


def select_detections_np(boxes, scores, labels, nms_threshold: float, detections_per_image: int):
    """``GLIPPostProcessor._select``: NMS (skipped when the threshold is <= 0), then keep the scores >= the k-th
    largest (k = ``detections_per_image``; ties may exceed it, as official; <= 0 keeps all)."""
    scores = np.asarray(scores, dtype=np.float32)
    if nms_threshold <= 0:
        keep = _stable_descending(scores)
    else:
        keep = legacy_nms_np(boxes, scores, labels, nms_threshold)
    boxes, scores, labels = np.asarray(boxes)[keep], scores[keep], np.asarray(labels)[keep]
    n, k = len(scores), int(detections_per_image)
    if n > k > 0:
        kth = np.sort(scores)[n - k]
        keep = scores >= kth
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, scores, labels
