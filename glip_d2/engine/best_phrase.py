"""One phrase per region: class-agnostic NMS over a predictor's detections, for pictures people read.

Why: GLIP's post-processing runs NMS per phrase (official, kept unchanged for evaluation), so one object can carry
a box for every phrase that scores above the threshold, and an undertrained model draws several loose boxes per
object. For a picture, ``keep_best_phrase_per_region`` keeps, among boxes that overlap by more than
``iou_threshold`` (plain IoU, any phrase), only the highest-scoring one. The demo's ``--agnostic-nms`` uses it;
nothing in evaluation does.
"""
from detectron2.structures import Instances
from torchvision.ops import nms

__all__ = ["check_iou_threshold", "keep_best_phrase_per_region"]


def check_iou_threshold(iou_threshold: float) -> None:
    """Raise ValueError unless the IoU threshold lies in (0, 1] (1 keeps all but exact duplicates)."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"agnostic NMS IoU threshold must be in (0, 1], got {iou_threshold}")


def keep_best_phrase_per_region(instances: Instances, iou_threshold: float) -> Instances:
    """The detections that no higher-scoring detection (of any phrase) overlaps by IoU > ``iou_threshold``.

    Returned best first. ``iou_threshold`` must lie in (0, 1]; 1 keeps every box except exact duplicates.
    """
    check_iou_threshold(iou_threshold)
    if len(instances) == 0:
        return instances
    keep = nms(instances.pred_boxes.tensor.float(), instances.scores.float(), iou_threshold)
    return instances[keep]
