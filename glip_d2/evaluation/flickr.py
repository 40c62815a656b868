"""Flickr30k Entities phrase grounding: Recall@k (GLIP_REFERENCE.md §5.3, official ``flickr_eval.py``).

Per evaluated phrase, the predicted boxes of that phrase (``pred_classes`` = phrase index) are sorted by score;
the phrase counts as recalled at k when any of the top-k boxes has IoU >= 0.5 with any of its ground-truth boxes.
Two protocols are reported together: "any-box" (every GT box of the phrase separately, official
``FLICKR_GT_TYPE "separate"``) and "merged" (the phrase's GT boxes merged into their enclosing box). A phrase
without predictions gets the official dummy box [0, 0, 0, 0] (a miss); phrases without GT boxes are skipped.
"""
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator

from .grounding_utils import (
    gather_predictions,
    overlap,
    phrase_gt_boxes,
    sorted_predictions,
)

__all__ = ["FlickrEvaluator", "flickr_recall"]

logger = logging.getLogger(__name__)


def _merge(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])[None] if len(boxes) > 1 else boxes


def flickr_recall(
    records: Sequence[dict],
    predictions: dict[object, dict[int, np.ndarray]],
    topk: Sequence[int] = (1, 5, 10),
    iou_thresh: float = 0.5,
    merge_boxes: bool = False,
) -> dict[str, float]:
    """Recall@k (fractions) and the upper bound (any predicted box) over every evaluated phrase.

    ``predictions``: image_id -> {phrase index: [n, 4] XYXY boxes sorted by decreasing score}.
    """
    hits = {k: 0 for k in topk}
    hits_all, total = 0, 0
    missing = []
    for record in records:
        phrase_boxes = phrase_gt_boxes(record)
        if not any(len(b) for b in phrase_boxes):
            continue
        image_id = record["image_id"]
        if image_id not in predictions:
            missing.append(image_id)
            continue
        per_phrase = predictions[image_id]
        for p, gt in enumerate(phrase_boxes):
            if len(gt) == 0:
                continue
            if merge_boxes:
                gt = _merge(gt)
            pred = per_phrase.get(p)
            if pred is None or len(pred) == 0:
                pred = np.zeros((1, 4))
            best = overlap(pred, gt).max(axis=1)  # best IoU of each predicted box, in score order
            total += 1
            for k in topk:
                hits[k] += int(best[:k].max() >= iou_thresh)
            hits_all += int(best.max() >= iou_thresh)
    if missing:
        raise RuntimeError(
            f"no prediction for {len(missing)} record(s) with evaluated phrases, e.g. image_id {missing[:5]}"
        )
    if total == 0:
        raise RuntimeError("no phrase with ground-truth boxes to evaluate")
    out = {f"R@{k}": hits[k] / total for k in topk}
    out["upper_bound"] = hits_all / total
    out["num_phrases"] = total
    return out


class FlickrEvaluator(DatasetEvaluator):
    """Recall@1/5/10 of phrase grounding on a registered Flickr30k-style dataset (``evaluator_type="flickr"``).

    Ground truth is read from ``DatasetCatalog.get(dataset_name)`` (``phrase_boxes_eval`` or annotations grouped
    by phrase); results are percentages under the task "flickr", "merged_*" for the merged-box protocol.
    """

    def __init__(
        self,
        dataset_name: str,
        topk: Sequence[int] = (1, 5, 10),
        iou_thresh: float = 0.5,
        distributed: bool = True,
        output_dir=None,
    ):
        self._dataset_name = dataset_name
        self._topk = tuple(topk)
        self._iou_thresh = iou_thresh
        self._distributed = distributed
        self._output_dir = output_dir
        self.reset()

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred = sorted_predictions(out["instances"])
            per_phrase = {int(c): pred["boxes"][pred["classes"] == c] for c in np.unique(pred["classes"])}
            self._predictions.append((inp["image_id"], per_phrase))

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return {}
        by_image = {}
        for image_id, per_phrase in predictions:
            if image_id in by_image:
                logger.warning(f"Flickr evaluation: several predictions for image_id {image_id}; keeping the first")
                continue
            by_image[image_id] = per_phrase
        records = DatasetCatalog.get(self._dataset_name)
        known = {r["image_id"] for r in records}
        unknown = [i for i in by_image if i not in known]
        if unknown:
            raise RuntimeError(f"predictions for image_id(s) {unknown[:5]} not in dataset {self._dataset_name}")
        results = OrderedDict()
        for merged in (False, True):
            r = flickr_recall(records, by_image, self._topk, self._iou_thresh, merge_boxes=merged)
            prefix = "merged_" if merged else ""
            for key, value in r.items():
                if key != "num_phrases":
                    results[prefix + key] = 100.0 * value
        logger.info(f"Flickr30k recall on {self._dataset_name} ({r['num_phrases']} phrases): {dict(results)}")
        return OrderedDict(flickr=results)
