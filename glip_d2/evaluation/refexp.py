"""RefCOCO/+/g referring expression comprehension: precision@k at IoU 0.5 (accuracy = top-1).

Every record has one referred box. All predicted boxes of the image (every phrase of its caption) are sorted by
score; the expression is correct at k when one of the top-k boxes overlaps the referred box by >= 0.5. The
standard metric uses IoU (default); the official GLIP/MDETR evaluator thresholds the *generalized* IoU, available
with ``overlap_kind="giou"`` (slightly stricter). An image without predictions is a miss.
"""
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Sequence

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator

from .grounding_utils import (
    gather_predictions,
    overlap,
    record_gt_boxes,
    sorted_predictions,
)

__all__ = ["RefExpEvaluator", "refexp_precision"]

logger = logging.getLogger(__name__)


def refexp_precision(
    records: Sequence[dict],
    predictions: dict[object, np.ndarray],
    topk: Sequence[int] = (1, 5, 10),
    iou_thresh: float = 0.5,
    overlap_kind: str = "iou",
) -> dict[str, dict[str, float]]:
    """Precision@k (fractions) per subset (record ``dataset_name``, e.g. "refcoco+") and over all records.

    ``predictions``: image_id -> [n, 4] XYXY boxes sorted by decreasing score.
    """
    hits = defaultdict(lambda: {k: 0 for k in topk})
    counts = defaultdict(int)
    for record in records:
        gt = record_gt_boxes(record)
        if len(gt) != 1:
            raise ValueError(
                f"referring-expression record image_id={record.get('image_id')} has {len(gt)} ground-truth boxes; "
                "exactly one is expected"
            )
        pred = predictions.get(record["image_id"])
        best = overlap(pred, gt, overlap_kind)[:, 0] if pred is not None and len(pred) else np.zeros(1)
        for subset in ("all", record.get("dataset_name")):
            if subset is None:
                continue
            counts[subset] += 1
            for k in topk:
                hits[subset][k] += int(best[:k].max() >= iou_thresh)
    if not counts:
        raise RuntimeError("no referring expression to evaluate")
    return {s: {f"P@{k}": hits[s][k] / counts[s] for k in topk} for s in counts}


class RefExpEvaluator(DatasetEvaluator):
    """Accuracy (P@1) and P@5/P@10 on a registered RefCOCO-style dataset (``evaluator_type="refexp"``)."""

    def __init__(
        self,
        dataset_name: str,
        topk: Sequence[int] = (1, 5, 10),
        iou_thresh: float = 0.5,
        overlap_kind: str = "iou",
        distributed: bool = True,
        output_dir=None,
    ):
        if overlap_kind not in ("iou", "giou"):
            raise ValueError(f"overlap_kind must be 'iou' or 'giou', got {overlap_kind!r}")
        self._dataset_name = dataset_name
        self._topk = tuple(topk)
        self._iou_thresh = iou_thresh
        self._overlap_kind = overlap_kind
        self._distributed = distributed
        self._output_dir = output_dir
        self.reset()

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self._predictions.append((inp["image_id"], sorted_predictions(out["instances"])["boxes"]))

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return {}
        by_image = {}
        for image_id, boxes in predictions:
            by_image.setdefault(image_id, boxes)
        records = DatasetCatalog.get(self._dataset_name)
        scores = refexp_precision(records, by_image, self._topk, self._iou_thresh, self._overlap_kind)
        results = OrderedDict((k, 100.0 * v) for k, v in scores["all"].items())
        results["accuracy"] = results[f"P@{self._topk[0]}"]
        subsets = sorted(s for s in scores if s != "all")
        if len(subsets) > 1:
            for s in subsets:
                for k, v in scores[s].items():
                    results[f"{s}/{k}"] = 100.0 * v
        logger.info(f"Referring expressions on {self._dataset_name}: {dict(results)}")
        return OrderedDict(refexp=results)
