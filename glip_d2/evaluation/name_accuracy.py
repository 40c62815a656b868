"""Does the best box on each object carry the object's own name? A detection evaluator for small vocabularies.

COCO AP rewards a right box with the right class, but averages over classes and thresholds; a demo user asks a
simpler question: "for each object in the picture, is the top-scoring box on it named right?". For every ground
truth object this evaluator takes the detections that overlap it (IoU >= ``iou_threshold``, score >=
``score_threshold``) and checks the category of the best-scoring one. An object without such a detection counts as
missed. Reported: ``name_accuracy`` (right / objects, in %), ``found`` (objects with an overlapping detection, in %)
and ``name_accuracy_when_found``; with two-word "colour shape" names also the colour and shape words separately.
"""
import itertools
import logging
from collections import OrderedDict

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

__all__ = ["NameAccuracyEvaluator", "best_name_per_object"]

logger = logging.getLogger(__name__)


def best_name_per_object(gt_boxes: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                         iou_threshold: float = 0.5) -> list[int | None]:
    """For each ground-truth box (xyxy), the class of the best-scoring detection overlapping it by IoU >=
    ``iou_threshold``, or None when none does."""
    if len(gt_boxes) == 0:
        return []
    if len(boxes) == 0:
        return [None] * len(gt_boxes)
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(boxes))  # [objects, detections]
    masked = torch.where(iou >= iou_threshold, scores[None, :].expand_as(iou), torch.full_like(iou, -1.0))
    best_score, best = masked.max(dim=1)
    return [int(classes[j]) if s >= 0 else None for s, j in zip(best_score.tolist(), best.tolist())]


class NameAccuracyEvaluator(DatasetEvaluator):
    """Per-object name accuracy of a detector on a registered dataset with box annotations (see module doc)."""

    def __init__(self, dataset_name: str, iou_threshold: float = 0.5, score_threshold: float = 0.0):
        self._dataset_name = dataset_name
        self._iou_threshold = iou_threshold
        self._score_threshold = score_threshold
        meta = MetadataCatalog.get(dataset_name)
        self._classes = list(meta.thing_classes)
        self._gt = {}
        for record in DatasetCatalog.get(dataset_name):
            boxes, labels = [], []
            for a in record.get("annotations", []):
                boxes.append(BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS))
                labels.append(a["category_id"])  # contiguous, as detectron2's loaders store it
            self._gt[record["image_id"]] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels)

    def reset(self):
        self._pairs = []  # (right class, predicted class or None) per object

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if inp["image_id"] not in self._gt:
                raise KeyError(f"image_id {inp['image_id']!r} is not in {self._dataset_name!r}")
            gt_boxes, labels = self._gt[inp["image_id"]]
            inst = out["instances"].to("cpu")
            keep = inst.scores >= self._score_threshold
            names = best_name_per_object(gt_boxes, inst.pred_boxes.tensor[keep], inst.scores[keep],
                                         inst.pred_classes[keep], self._iou_threshold)
            self._pairs.extend(zip(labels, names))

    def evaluate(self):
        pairs = list(itertools.chain(*comm.gather(self._pairs, dst=0)))
        if not comm.is_main_process():
            return {}
        if not pairs:
            logger.warning("NameAccuracyEvaluator: no objects in %s", self._dataset_name)
            return {}
        found = [(t, p) for t, p in pairs if p is not None]
        result = OrderedDict(
            name_accuracy=100.0 * sum(t == p for t, p in pairs) / len(pairs),
            found=100.0 * len(found) / len(pairs),
            name_accuracy_when_found=100.0 * sum(t == p for t, p in found) / max(len(found), 1),
            objects=float(len(pairs)),
        )
        words = [self._classes[t].split() for t, _ in found]
        if found and all(len(w) == 2 for w in words):  # "colour shape": which word goes wrong
            predicted = [self._classes[p].split() for _, p in found]
            for i, part in enumerate(("colour", "shape")):
                right = sum(w[i] == q[i] if len(q) == 2 else False for w, q in zip(words, predicted))
                result[f"{part}_accuracy_when_found"] = 100.0 * right / len(found)
        logger.info("Name accuracy on %s: %s", self._dataset_name,
                    ", ".join(f"{k} {v:.1f}" for k, v in result.items()))
        return {"names": result}
