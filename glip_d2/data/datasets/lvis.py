"""LVIS v1 with category names taken from the json (GLIP's prompts use each category's ``name``).

Loading is detectron2's ``load_lvis_json`` (records keep ``not_exhaustive_category_ids`` / ``neg_category_ids``,
file names come from ``coco_url``, so ``image_root`` is the folder holding ``train2017/`` and ``val2017/``);
evaluation is detectron2's ``LVISEvaluator`` (``evaluator_type="lvis"``). Only the metadata differs from
detectron2's builtin ``lvis_v1_*``: those take ``synonyms[0]`` as the class name (``"horned_cow"`` for LVIS id
"bull"), GLIP takes ``name``. detectron2 owns the plain names, so the builtins here are
``lvis_v1_train_glip``, ``lvis_v1_val_glip`` and ``lvis_v1_minival`` (MDETR/GLIP's 5k-image minival).
"""
import json
import os
from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import (
    LVIS_CATEGORIES as _LVIS_V1_CATEGORIES,
)
from detectron2.utils.file_io import PathManager

__all__ = ["LVIS_BUILTIN", "load_lvis_grounding_json", "register_all_lvis_grounding", "register_lvis_grounding"]


def _lvis_v1_names() -> list[str]:
    """The 1203 LVIS v1 category names in id order, as in the json (no disk access)."""
    return [c["name"] for c in sorted(_LVIS_V1_CATEGORIES, key=lambda c: c["id"])]


def load_lvis_grounding_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """``load_lvis_json`` plus category names from the json's ``name`` field.

    With ``dataset_name``, sets its ``thing_classes`` (or checks them when already set, raising a clear error
    on a mismatch). Category ids must be 1..N as in LVIS; ``category_id`` becomes id - 1.
    """
    # load_lvis_json joins image_root and the split folder by string concatenation: make it end with "/".
    # It only knows metadata of names containing "v0.5"/"v1" (synonym names), so it gets no dataset name.
    records = load_lvis_json(json_file, os.path.join(image_root, ""), None)
    if dataset_name is not None:
        with PathManager.open(json_file, "r") as f:
            categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
        ids = [c["id"] for c in categories]
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"{json_file}: LVIS category ids must be 1..{len(ids)} without gaps")
        names = [c["name"] for c in categories]
        meta = MetadataCatalog.get(dataset_name)
        existing = meta.get("thing_classes")
        if existing is not None and list(existing) != names:
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(existing, names)) if a != b][:5]
            raise ValueError(
                f"{dataset_name}: categories of {json_file} differ from the registered thing_classes "
                f"({len(names)} vs {len(existing)} names; first differences (index, registered, json): {diff})"
            )
        if existing is None:
            meta.thing_classes = names
    return records


def register_lvis_grounding(
    name: str, json_file: str, image_root: str, thing_classes: Sequence[str] | None = None
) -> None:
    """Register an LVIS-format json; nothing is read until ``DatasetCatalog.get(name)``.

    Example::

        register_lvis_grounding("lvis_v1_minival", "datasets/lvis/lvis_v1_minival_inserted_image_name.json",
                                "datasets/coco/")

    ``thing_classes``: the json's category names in id order when known up front (the builtins pass the LVIS v1
    list), so prompts can be built before loading; otherwise they are set from the json on loading.
    """
    DatasetCatalog.register(name, lambda: load_lvis_grounding_json(json_file, image_root, name))
    meta = {"json_file": json_file, "image_root": image_root, "evaluator_type": "lvis"}
    if thing_classes is not None:
        meta["thing_classes"] = list(thing_classes)
    MetadataCatalog.get(name).set(**meta)


#: name -> (image_root, json_file) relative to $DETECTRON2_DATASETS (detectron2's LVIS layout).
LVIS_BUILTIN: dict[str, tuple] = {
    "lvis_v1_train_glip": ("coco/", "lvis/lvis_v1_train.json"),
    "lvis_v1_val_glip": ("coco/", "lvis/lvis_v1_val.json"),
    "lvis_v1_minival": ("coco/", "lvis/lvis_v1_minival_inserted_image_name.json"),
}


def register_all_lvis_grounding(root: str) -> None:
    """Register :data:`LVIS_BUILTIN` under ``root`` with the LVIS v1 names (no disk access)."""
    names = _lvis_v1_names()
    for name, (image_root, json_file) in LVIS_BUILTIN.items():
        register_lvis_grounding(name, os.path.join(root, json_file), os.path.join(root, image_root), names)
