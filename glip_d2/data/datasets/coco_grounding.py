"""Any COCO-format detection json (COCO, Objects365, ODinW) as grounding data.

Detection data has no captions: the grounding mapper builds the prompt from
``MetadataCatalog.get(name).thing_classes`` (shuffled with sampled negatives in training, all classes in
evaluation) and gives each box the span of its class name. Registration is therefore detectron2's own COCO
loading; what this module adds is a one-call registration with optional renamed categories (GLIP's
``OVERRIDE_CATEGORY``, used by the ODinW configs) and builtin names for Objects365.

COCO itself needs nothing new: detectron2's builtin ``coco_2017_train`` / ``coco_2017_val`` already carry
``thing_classes`` and ``evaluator_type="coco"``.
"""
import json
import os
from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.utils.file_io import PathManager

__all__ = ["COCO_GROUNDING_BUILTIN", "register_all_coco_grounding", "register_coco_grounding", "register_odinw"]


def _load(json_file: str, image_root: str, name: str, thing_classes: list[str] | None) -> list[dict]:
    if not PathManager.exists(json_file):  # registration is lazy: say which dataset wanted the missing file
        raise FileNotFoundError(f"dataset '{name}': annotation file not found: {json_file}")
    if thing_classes is None:
        return load_coco_json(json_file, image_root, name)  # sets thing_classes from the json
    # Renamed categories: load without touching metadata, then map ids ourselves (the metadata already has
    # the override names and would conflict with the json's).
    records = load_coco_json(json_file, image_root, None)
    id_map = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    for record in records:
        for ann in record["annotations"]:
            if ann["category_id"] not in id_map:
                raise ValueError(f"{json_file}: category id {ann['category_id']} is not among the registered "
                                 f"categories {sorted(id_map)}")
            ann["category_id"] = id_map[ann["category_id"]]
    return records


def _category_ids(json_file: str) -> list[int]:
    with PathManager.open(json_file, "r") as f:
        return sorted(c["id"] for c in json.load(f)["categories"])


def register_coco_grounding(
    name: str,
    json_file: str,
    image_root: str,
    thing_classes: Sequence[str] | None = None,
    evaluator_type: str = "coco",
    metadata: dict | None = None,
    category_ids: Sequence[int] | None = None,
) -> None:
    """Register a COCO-format detection json for grounding training/evaluation.

    Example (ODinW Aquarium)::

        register_coco_grounding("aquarium_val", "odinw/Aquarium/valid/annotations_without_background.json",
                                "odinw/Aquarium/valid")

    Args:
        thing_classes: category names replacing the json's, in category-id order (GLIP's
            ``OVERRIDE_CATEGORY``). Without it nothing is read until ``DatasetCatalog.get(name)``, which sets
            ``thing_classes`` from the json (as detectron2 does); with it the json's category ids are read now,
            so the prompt can be built before the data is loaded.
        evaluator_type: ``"coco"`` for box AP with detectron2's ``COCOEvaluator``.
        category_ids: the json's category ids, one per ``thing_classes`` name, when the caller knows them (a
            catalog such as ODinW's): then nothing is read at registration either.
    """
    meta = dict(json_file=json_file, image_root=image_root, evaluator_type=evaluator_type, **(metadata or {}))
    if category_ids is not None and thing_classes is None:
        raise ValueError(f"{name}: category_ids only name the ids of the given thing_classes; pass both")
    if thing_classes is not None:
        thing_classes = list(thing_classes)
        if category_ids is None:
            cat_ids, source = _category_ids(json_file), f"{json_file} has"
        else:
            cat_ids, source = list(category_ids), "category_ids name"
            if len(set(cat_ids)) != len(cat_ids):
                raise ValueError(f"{name}: category_ids are not unique: {cat_ids}")
        if len(cat_ids) != len(thing_classes):
            raise ValueError(f"{name}: {len(thing_classes)} thing_classes given but {source} "
                             f"{len(cat_ids)} categories")
        meta.update(thing_classes=thing_classes,
                    thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)})
    DatasetCatalog.register(name, lambda: _load(json_file, image_root, name, thing_classes))
    MetadataCatalog.get(name).set(**meta)


def register_odinw(
    prefix: str,
    dataset_dir: str,
    thing_classes: Sequence[str] | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
) -> list[str]:
    """Register an ODinW dataset in GLIP's layout as ``{prefix}_{split}``.

    GLIP's ODinW folders hold ``{train,valid,test}/annotations_without_background.json`` next to the images.
    Example::

        register_odinw("odinw_aerial", "datasets/odinw/AerialMaritimeDrone/large",
                       thing_classes=["boat", "car", "dock", "jetski", "lift"])
    """
    folders = {"train": "train", "val": "valid", "test": "test"}
    names = []
    for split in splits:
        if split not in folders:
            raise ValueError(f"unknown ODinW split {split!r}; expected one of {sorted(folders)}")
        folder = os.path.join(dataset_dir, folders[split])
        name = f"{prefix}_{split}"
        register_coco_grounding(
            name, os.path.join(folder, "annotations_without_background.json"), folder, thing_classes
        )
        names.append(name)
    return names


#: Builtin detection-as-grounding sets: name -> (image_root, json_file) relative to $DETECTRON2_DATASETS.
COCO_GROUNDING_BUILTIN: dict[str, tuple] = {
    "objects365_v2_train": ("objects365/train", "objects365/annotations/zhiyuan_objv2_train.json"),
    "objects365_v2_val": ("objects365/val", "objects365/annotations/zhiyuan_objv2_val.json"),
}


def register_all_coco_grounding(root: str) -> None:
    """Register :data:`COCO_GROUNDING_BUILTIN` under ``root`` (no disk access)."""
    for name, (image_root, json_file) in COCO_GROUNDING_BUILTIN.items():
        register_coco_grounding(name, os.path.join(root, json_file), os.path.join(root, image_root))
