"""K-shot training subsets (``DATASETS.FEW_SHOT``, ``DATASETS.SHUFFLE_SEED``) and epoch-based repetition.

The official sampler (microsoft/GLIP ``COCODataset`` / ``CocoGrounding`` with ``few_shot``) is greedy over images:
images without a usable box are dropped, the rest are sorted by id and, when the seed is not 0, shuffled with
Python's ``random.Random(seed)``; an image is kept when at least one of its categories has been seen in fewer than
K kept images, and then counts once for every category it contains. So "K-shot" means every category appears in
at least K training images (more when categories share images), not exactly K boxes. The same seed gives the same
subset, here and in the official code.
"""
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence

from detectron2.structures import BoxMode

__all__ = ["few_shot_subset", "has_usable_box", "repeat_records", "epoch_iterations"]

logger = logging.getLogger(__name__)


def has_usable_box(record: dict) -> bool:
    """At least one annotation whose box is more than 1 pixel wide and high (official ``has_valid_annotation``)."""
    for ann in record.get("annotations", []):
        box = ann.get("bbox")
        if box is None:
            continue
        mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
        x0, y0, x1, y1 = BoxMode.convert(list(box), mode, BoxMode.XYXY_ABS)
        if x1 - x0 > 1 and y1 - y0 > 1:
            return True
    return False


def few_shot_subset(records: Sequence[dict], shots: int, seed: int = 0) -> list[dict]:
    """The images of a K-shot training set, in sampling order (see the module docstring)."""
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise ValueError(f"DATASETS.FEW_SHOT must be a non-negative integer, got {shots!r}")
    if shots == 0:
        return list(records)
    for r in records:
        for ann in r.get("annotations", []):
            if "category_id" not in ann:
                raise ValueError(
                    f"few-shot sampling needs category ids; image {r.get('image_id', '?')} has an annotation "
                    "without 'category_id' (caption-only grounding data cannot be sampled per category)"
                )
    pool = sorted((r for r in records if has_usable_box(r)), key=lambda r: r.get("image_id", 0))
    if seed:
        random.Random(seed).shuffle(pool)
    needed: Counter = Counter()
    categories = {ann["category_id"] for r in pool for ann in r["annotations"]}
    for c in categories:
        needed[c] = shots
    kept = []
    for r in pool:
        present = {ann["category_id"] for ann in r["annotations"]}
        if any(needed[c] > 0 for c in present):
            kept.append(r)
            for c in present:
                needed[c] -= 1
    per_category = Counter(c for r in kept for c in {a["category_id"] for a in r["annotations"]})
    logger.info(
        "%d-shot sampling (seed %d): %d of %d images kept; images per category: min %d, max %d (%d categories)",
        shots, seed, len(kept), len(records), min(per_category.values(), default=0),
        max(per_category.values(), default=0), len(per_category),
    )
    return kept


def repeat_records(records: Sequence[dict], copies: int) -> list[dict]:
    """The training list repeated ``copies`` times (official ``GENERAL_COPY``)."""
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise ValueError(f"DATASETS.GENERAL_COPY must be a positive integer, got {copies!r}")
    return list(records) * copies


def epoch_iterations(num_records: int, epochs: int, batch_size: int) -> int:
    """Iterations of ``epochs`` passes over ``num_records`` images (official ``MAX_EPOCH * len(dataset) // batch``),
    at least 1."""
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"epochs and batch size must be positive, got {epochs} and {batch_size}")
    return max(1, math.floor(epochs * num_records / batch_size))
