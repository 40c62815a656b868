"""Checks of one annotation (box, category, caption spans) and of a dataset's category names.

Each returns the problem kind (a key of ``PROBLEMS``) with a short description, or None. They never change their
input; the only repair, clipping a box to the image, is returned as a new box.
"""
import math
import numbers
from collections.abc import Sequence

from detectron2.structures import BoxMode

from ..prompts import clean_name

__all__ = ["BOX_TOLERANCE", "check_box", "check_category", "check_category_names", "check_spans"]

#: Pixels a box may extend past the image before it counts as outside. COCO-style jsons often have x + w a
#: fraction of a pixel past the width; detectron2's mapper clips those anyway.
BOX_TOLERANCE = 1.0
_XYWH, _XYXY = int(BoxMode.XYWH_ABS), int(BoxMode.XYXY_ABS)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else repr(v) for v in values) + "]"


def _describe(bbox, mode) -> str:
    try:
        return f"bbox {_fmt(bbox)} ({BoxMode(mode).name})"
    except ValueError:
        return f"bbox {_fmt(bbox)} (bbox_mode {mode!r})"


def check_box(ann: dict, height: int | None, width: int | None):
    """(kind, description, clipped bbox or None) for a bad box, or None.

    ``box_outside_image`` comes with the box clipped to [0, width] x [0, height] in the annotation's own box mode,
    or None when nothing of it is inside the image. Boxes are only compared with the image when its size is known;
    boxes in modes other than absolute XYWH / XYXY are only checked to be finite. Runs once per annotation of
    sets with tens of millions of boxes, hence the plain arithmetic.
    """
    bbox = ann.get("bbox")
    if bbox is None:
        return None
    mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
    try:
        x1, y1, a, b = bbox
        x1, y1, a, b = float(x1), float(y1), float(a), float(b)
    except (TypeError, ValueError):
        return "invalid_box", f"bbox {bbox!r}", None
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(a) and math.isfinite(b)):
        return "invalid_box", f"bbox {bbox!r}", None
    if mode == _XYWH:
        x2, y2 = x1 + a, y1 + b
    elif mode == _XYXY:
        x2, y2 = a, b
    else:
        return None
    if x2 < x1 or y2 < y1:
        return "negative_box", _describe(bbox, mode), None
    if x2 == x1 or y2 == y1:
        return "empty_box", _describe(bbox, mode), None
    t = BOX_TOLERANCE
    if not height or not width or (x1 >= -t and y1 >= -t and x2 <= width + t and y2 <= height + t):
        return None
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    clipped = None
    if cx2 > cx1 and cy2 > cy1:
        clipped = [cx1, cy1, cx2 - cx1, cy2 - cy1] if mode == BoxMode.XYWH_ABS else [cx1, cy1, cx2, cy2]
    return "box_outside_image", f"{_describe(bbox, mode)} in a {width}x{height} image", clipped


def check_category(ann: dict, num_classes: int | None):
    """``unknown_category`` when ``category_id`` is not an index of thing_classes (unchecked without them)."""
    if num_classes is None or "category_id" not in ann:
        return None
    c = ann["category_id"]
    integer = type(c) is int or (isinstance(c, numbers.Integral) and not isinstance(c, bool))
    if not integer or not 0 <= c < num_classes:
        return "unknown_category", f"category_id {c!r} (thing_classes has {num_classes} names: 0..{num_classes - 1})"
    return None


def _bad_span(span, length: int) -> bool:
    try:
        start, end = span
        ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (start, end))
        return not (ints and 0 <= start < end <= length)
    except (TypeError, ValueError):
        return True


def check_spans(spans, caption: str):
    """The first span of ``spans`` (a list of [start, end]) outside ``caption``, described; None when all fit."""
    if not isinstance(spans, (list, tuple)):
        return f"spans {spans!r} are not a list of [start, end]"
    for span in spans:
        if _bad_span(span, len(caption)):
            short = caption if len(caption) <= 60 else caption[:57] + "..."
            return f"span {span!r} in a caption of length {len(caption)} ({short!r})"
    return None


def check_category_names(classes: Sequence[str], dataset_ids: dict | None = None) -> list[tuple[str, str]]:
    """``empty_category_name`` / ``duplicate_category_name`` problems of thing_classes, naming each category id.

    Names are compared as the prompt shows them: after ``clean_name``, stripped, lower-cased (GLIP's text encoders
    are uncased), so ``"traffic_light"`` and ``"Traffic light"`` are duplicates.
    """
    to_dataset = {v: k for k, v in (dataset_ids or {}).items()}
    problems, first = [], {}
    for i, raw in enumerate(classes):
        where = f"category_id {i}" + (f" (dataset id {to_dataset[i]})" if i in to_dataset else "")
        text = clean_name(raw).strip().lower() if isinstance(raw, str) else ""
        if not text:
            problems.append(("empty_category_name", f"{where}: name {raw!r}"))
        elif text in first:
            j = first[text]
            problems.append(("duplicate_category_name", f"{where}: name {raw!r} repeats category_id {j} "
                                                        f"({classes[j]!r})"))
        else:
            first[text] = i
    return problems
