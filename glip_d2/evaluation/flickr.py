"""Flickr30k Entities phrase grounding: Recall@k (official ``flickr_eval.py``).

Per evaluated phrase, the predicted boxes of that phrase (``pred_classes`` = phrase index) are sorted by score;
the phrase counts as recalled at k when any of the top-k boxes has IoU >= 0.5 with any of its ground-truth boxes.
Two protocols are reported together: "any-box" (every GT box of the phrase separately, official
``FLICKR_GT_TYPE "separate"``) and "merged" (the phrase's GT boxes merged into their enclosing box). A phrase
without predictions gets the official dummy box [0, 0, 0, 0] (a miss); phrases without GT boxes are skipped.
Beside the overall numbers, each phrase type of Flickr30k Entities (people, clothing, ...) gets its own recall,
as in the official report, when the types are known (:mod:`.flickr_phrase_types`).
"""
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from .flickr_phrase_types import record_phrase_types
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
    phrase_types: Mapping[object, list[list[str]]] | None = None,
) -> dict[str, float]:
    """Recall@k (fractions) and the upper bound (any predicted box) over every evaluated phrase.

    ``predictions``: image_id -> {phrase index: [n, 4] XYXY boxes sorted by decreasing score}.
    ``phrase_types``: image_id -> the types of each phrase; adds ``R@k_<type>`` / ``upper_bound_<type>``
    (a phrase with several types counts in each, as officially).
    """
    hits = {k: 0 for k in topk}
    hits_all, total = 0, 0
    by_type = defaultdict(lambda: np.zeros(len(topk) + 2, dtype=np.int64))  # hits per k, upper bound, count
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
        types = (phrase_types or {}).get(image_id)
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
            row = [int(best[:k].max() >= iou_thresh) for k in topk] + [int(best.max() >= iou_thresh), 1]
            for k, hit in zip(topk, row):
                hits[k] += hit
            hits_all += row[-2]
            for t in types[p] if types is not None and p < len(types) else ():
                by_type[t] += row
    if missing:
        raise RuntimeError(
            f"no prediction for {len(missing)} record(s) with evaluated phrases, e.g. image_id {missing[:5]}"
        )
    if total == 0:
        raise RuntimeError("no phrase with ground-truth boxes to evaluate")
    out = {f"R@{k}": hits[k] / total for k in topk}
    out["upper_bound"] = hits_all / total
    for t, row in sorted(by_type.items()):
        out.update({f"R@{k}_{t}": row[i] / row[-1] for i, k in enumerate(topk)})
        out[f"upper_bound_{t}"] = row[-2] / row[-1]
    out["num_phrases"] = total
    return out


class FlickrEvaluator(DatasetEvaluator):
    """Recall@1/5/10 of phrase grounding on a registered Flickr30k-style dataset (``evaluator_type="flickr"``).

    Ground truth is read from ``DatasetCatalog.get(dataset_name)`` (``phrase_boxes_eval`` or annotations grouped
    by phrase); results are percentages under the task "flickr", "merged_*" for the merged-box protocol, with
    per-type keys (``R@1_people``, ...) when phrase types are found: records' ``phrase_types``, or the Flickr30k
    Entities ``Sentences/`` folder under ``entities_root`` (default: the dataset's ``flickr_entities_root``).
    """

    def __init__(
        self,
        dataset_name: str,
        topk: Sequence[int] = (1, 5, 10),
        iou_thresh: float = 0.5,
        distributed: bool = True,
        output_dir=None,
        entities_root: str | None = None,
    ):
        self._dataset_name = dataset_name
        self._entities_root = entities_root or MetadataCatalog.get(dataset_name).get("flickr_entities_root", None)
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
        types = record_phrase_types(records, self._entities_root)
        results = OrderedDict()
        for merged in (False, True):
            r = flickr_recall(records, by_image, self._topk, self._iou_thresh, merge_boxes=merged, phrase_types=types)
            prefix = "merged_" if merged else ""
            for key, value in r.items():
                if key != "num_phrases":
                    results[prefix + key] = 100.0 * value
        logger.info(f"Flickr30k recall on {self._dataset_name} ({r['num_phrases']} phrases): {dict(results)}")
        return OrderedDict(flickr=results)
