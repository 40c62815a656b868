"""detectron2's LVISEvaluator, runnable with NumPy >= 1.24, with GLIP's Fixed AP beside the standard AP.

Standard LVIS AP keeps the top ``max_dets_per_image`` (300) detections of each image. Fixed AP (Dave et al.,
"Evaluating large-vocabulary object detectors: the devil is in the details", 2021; what GLIP and MDETR report)
keeps instead the top ``fixed_ap_topk`` (10,000) detections of each *class* over the whole dataset and caps
nothing per image, so a class is not starved by the other classes of the images it appears in. Both are computed
from the same predictions: ``"bbox"`` is the standard AP, ``"bbox_fixed_ap"`` the Fixed AP.
"""
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ..compat import numpy_float_alias

__all__ = ["LVISEvaluator", "top_k_per_class"]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_FIELDS = ("image_id", "category_id", "score", "bbox")


def top_k_per_class(classes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores of each class (equal scores: earlier rows first), class by class."""
    order = np.lexsort((np.arange(len(scores)), -scores, classes))
    sorted_classes = classes[order]
    first = np.searchsorted(sorted_classes, sorted_classes, side="left")  # start of each row's class run
    return order[np.arange(len(order)) - first < k]


class _ClassTopK:
    """The per-class top-k of every detection added so far, in flat arrays (``_FIELDS``).

    Rows are pruned whenever the unpruned rows outnumber the kept ones, so memory stays near
    classes x k rows (the official evaluator keeps Python dicts per class for the same reason).
    """

    def __init__(self, k: int):
        self.k = k
        self.parts = []
        self.kept = 0
        self.pending = 0

    def add(self, rows: dict) -> None:
        self.parts.append(rows)
        self.pending += len(rows["score"])
        if self.pending > max(self.kept, 1 << 20):
            self.compact()

    def compact(self) -> dict:
        rows = {f: np.concatenate([p[f] for p in self.parts]) if self.parts else _empty_rows()[f] for f in _FIELDS}
        keep = top_k_per_class(rows["category_id"], rows["score"], self.k)
        rows = {f: v[keep] for f, v in rows.items()}
        self.parts, self.kept, self.pending = [rows], len(keep), 0
        return rows


def _empty_rows() -> dict:
    return {"image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64),
            "score": np.zeros(0, np.float32), "bbox": np.zeros((0, 4), np.float32)}


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's evaluator; ``evaluate()`` runs with ``np.float`` defined (lvis 0.5.3, the latest release, still
    calls it; the alias exists only during the call) and, with ``fixed_ap_topk > 0``, adds ``"bbox_fixed_ap"``.

    Each image keeps only its top ``max_dets_per_image`` detections for the standard AP as they arrive (the LVIS
    API would drop the rest anyway), so a model that outputs thousands per image for Fixed AP does not fill memory.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, fixed_ap_topk: int = 0):
        super().__init__(dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image)
        self._fixed_ap_topk = int(fixed_ap_topk)

    def reset(self):
        super().reset()
        self._fixed_pool = _ClassTopK(self._fixed_ap_topk) if self._fixed_ap_topk > 0 else None

    def process(self, inputs, outputs):
        cap = 300 if self._max_dets_per_image is None else self._max_dets_per_image
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                super().process([inp], [out])
                continue
            instances = out["instances"].to(self._cpu_device)
            if self._fixed_pool is not None and len(instances):
                self._fixed_pool.add(_flat_rows(instances, inp["image_id"]))
            if 0 <= cap < len(instances):
                order = torch.sort(instances.scores, descending=True, stable=True).indices[:cap]
                instances = instances[torch.sort(order).values]  # the LVIS API's own cut, in the input order
            prediction = {"image_id": inp["image_id"], "instances": instances_to_coco_json(instances, inp["image_id"])}
            if "proposals" in out:
                prediction["proposals"] = out["proposals"].to(self._cpu_device)
            self._predictions.append(prediction)

    def evaluate(self):
        with numpy_float_alias():
            pool = self._gather_fixed_pool()  # every process takes part before the main one returns
            results = super().evaluate()
            if pool is not None and results and self._do_evaluation:
                results["bbox_fixed_ap"] = self._eval_fixed_ap(pool)
            return results

    def _gather_fixed_pool(self):
        if self._fixed_pool is None:
            return None
        rows = self._fixed_pool.compact()
        if self._distributed:
            comm.synchronize()
            parts = comm.gather(rows, dst=0)
            if not comm.is_main_process():
                return None
            merged = _ClassTopK(self._fixed_ap_topk)
            merged.parts = parts
            rows = merged.compact()
        return rows

    def _eval_fixed_ap(self, rows: dict) -> dict:
        """LVIS AP on the per-class top-k, with no per-image limit (max_dets -1, as the official evaluator)."""
        from lvis import LVISEval, LVISResults

        if len(rows["score"]) == 0:
            logger.warning("[LVISEvaluator] no detections for Fixed AP")
            return {m: float("nan") for m in _METRICS}
        to_dataset_id = {v: k for k, v in self._metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
        categories = [to_dataset_id[c] if to_dataset_id else c + 1 for c in rows["category_id"].tolist()]
        counts = np.bincount(rows["category_id"])
        short = int((counts[counts > 0] < self._fixed_ap_topk).sum())
        logger.info(f"Fixed AP: top {self._fixed_ap_topk} per class over the dataset, no per-image limit; "
                    f"{short} of {int((counts > 0).sum())} detected classes have fewer (more outputs would raise AP)")
        results = [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(rows["image_id"].tolist(), categories, rows["bbox"].tolist(), rows["score"].tolist())
        ]
        lvis_eval = LVISEval(self._lvis_api, LVISResults(self._lvis_api, results, max_dets=-1), "bbox")
        lvis_eval.params.max_dets = -1
        lvis_eval.run()
        lvis_eval.print_results()
        metrics = {m: float(lvis_eval.get_results()[m] * 100) for m in _METRICS}
        logger.info("Fixed AP (bbox):\n" + create_small_table(metrics))
        return OrderedDict(metrics)


def _flat_rows(instances, image_id) -> dict:
    """One image's detections as Fixed-AP rows, boxes in the XYWH floats the COCO/LVIS export writes."""
    boxes = BoxMode.convert(instances.pred_boxes.tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    n = len(instances)
    return {"image_id": np.full(n, image_id, np.int64), "category_id": instances.pred_classes.numpy().astype(np.int64),
            "score": instances.scores.numpy().astype(np.float32), "bbox": boxes.numpy().astype(np.float32)}
