"""Shared pieces of the phrase-grounding evaluators: ground truth from dataset records, box overlap, gathering."""
import itertools
import logging

import numpy as np
import torch
from detectron2.structures import BoxMode
from detectron2.utils import comm
from torchvision.ops import box_iou, generalized_box_iou

from ..data.prompts import grounding_phrases

__all__ = ["gather_predictions", "overlap", "phrase_gt_boxes", "record_gt_boxes", "sorted_predictions"]

logger = logging.getLogger(__name__)


def _xyxy(annotation: dict) -> list[float]:
    return BoxMode.convert(list(annotation["bbox"]), annotation.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)


def phrase_gt_boxes(record: dict) -> list[np.ndarray]:
    """Ground-truth boxes (XYXY, original pixels) of each evaluated phrase of a record, in phrase-index order.

    Uses ``phrase_boxes_eval`` when the dataset loader stored it, else the annotations grouped by
    ``grounding_phrases`` (the same phrase order the mapper uses for ``positive_map_labels``).
    """
    if record.get("phrase_boxes_eval") is not None:
        return [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in record["phrase_boxes_eval"]]
    phrases, index = grounding_phrases(record)
    boxes = [[] for _ in phrases]
    for ann, p in zip(record.get("annotations", []), index):
        if p >= 0:
            boxes[p].append(_xyxy(ann))
    return [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]


def record_gt_boxes(record: dict) -> np.ndarray:
    """All ground-truth boxes of a record (XYXY): ``boxes_eval`` when stored, else its annotations."""
    if record.get("boxes_eval") is not None:
        return np.asarray(record["boxes_eval"], dtype=np.float64).reshape(-1, 4)
    return np.asarray([_xyxy(a) for a in record.get("annotations", [])], dtype=np.float64).reshape(-1, 4)


def sorted_predictions(instances) -> dict[str, np.ndarray]:
    """Boxes, scores and classes of an output ``Instances``, by decreasing score (stable)."""
    instances = instances.to("cpu")
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    scores = instances.scores.numpy().astype(np.float64)
    classes = instances.pred_classes.numpy().astype(np.int64)
    order = np.argsort(-scores, kind="stable")
    return {"boxes": boxes[order], "scores": scores[order], "classes": classes[order]}


def overlap(pred: np.ndarray, gt: np.ndarray, kind: str = "iou") -> np.ndarray:
    """[P, G] IoU (continuous coordinates, as the official evaluators) or generalized IoU; NaN (0/0) -> 0."""
    if kind not in ("iou", "giou"):
        raise ValueError(f"overlap kind must be 'iou' or 'giou', got {kind!r}")
    fn = box_iou if kind == "iou" else generalized_box_iou
    pred = torch.as_tensor(pred, dtype=torch.float64).reshape(-1, 4)
    out = fn(pred, torch.as_tensor(gt, dtype=torch.float64).reshape(-1, 4))
    return torch.nan_to_num(out, nan=0.0).numpy()


def gather_predictions(predictions: list, distributed: bool):
    """All workers' predictions on the main process (None elsewhere)."""
    if not distributed:
        return predictions
    comm.synchronize()
    gathered = comm.gather(predictions, dst=0)
    if not comm.is_main_process():
        return None
    return list(itertools.chain(*gathered))
