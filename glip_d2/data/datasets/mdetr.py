"""MDETR/GLIP-style grounding jsons (Flickr30k Entities, RefCOCO/+/g, GoldG "mixed") as detectron2 datasets.

These files are COCO jsons whose images carry a ``caption`` (plus ``tokens_positive_eval``, ``sentence_id``,
``original_img_id``, ... for evaluation) and whose annotations carry ``tokens_positive`` (char spans of the
phrase in the caption). detectron2's ``load_coco_json`` keeps extra *annotation* keys but drops image keys, so
:func:`load_grounding_json` runs it and then copies the image-level keys from the json onto each record.

Besides detectron2's standard fields every record gets:

* the image keys in :data:`IMAGE_KEYS` that the json has (``caption`` is required);
* ``boxes_eval``: the annotation boxes as ``[x1, y1, x2, y2]`` in original image pixels, and, when the image has
  ``tokens_positive_eval``, ``phrase_boxes_eval``: for each evaluated phrase the boxes of the annotations whose
  spans overlap that phrase's spans. These are plain record keys, so they survive a test-time mapper that drops
  ``annotations``; phrase-grounding (Recall@k) and REC evaluators read them instead of the raw Flickr files.

Register one file with :func:`register_mdetr_grounding`; the builtin names (``flickr30k_{train,val,test}``,
``refcoco_*``, ``refcoco+_*``, ``refcocog_*``, ``mixed_train``, ``mixed_train_no_coco``) point under
``$DETECTRON2_DATASETS`` (default ``./datasets``) with GLIP's/MDETR's file names and touch no file until loaded.
"""
import json
import logging
import os
from collections.abc import Mapping

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.utils.file_io import PathManager

__all__ = [
    "ANNOTATION_KEYS",
    "IMAGE_KEYS",
    "MDETR_BUILTIN",
    "load_grounding_json",
    "register_all_mdetr",
    "register_mdetr_grounding",
]

logger = logging.getLogger(__name__)

#: Image-level keys copied onto each record when present in the json.
IMAGE_KEYS = (
    "caption",
    "dataset_name",
    "tokens_positive_eval",
    "tokens_negative",
    "sentence_id",
    "original_img_id",
    "original_id",
    "task_id",
    "data_source",
)
#: Annotation keys kept besides detectron2's (``bbox``, ``category_id``, ``segmentation``, ``iscrowd``).
ANNOTATION_KEYS = ["tokens_positive", "phrase_ids"]


def _spans_overlap(a: list[list[int]], b: list[list[int]]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def _check_spans(spans, caption: str, where: str) -> None:
    if not isinstance(spans, (list, tuple)):
        raise TypeError(f"{where}: spans must be a list of [start, end], got {spans!r}")
    for span in spans:
        if len(span) != 2 or not (0 <= span[0] < span[1] <= len(caption)):
            raise ValueError(
                f"{where}: span {list(span)} is not a non-empty [start, end) range inside the caption "
                f"of length {len(caption)} ({caption!r})"
            )


def _xywh_to_xyxy(box) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _add_grounding_fields(record: dict, img: dict, where: str) -> None:
    """Copy image keys, validate every span, and attach the evaluation boxes."""
    if "caption" not in img:
        raise ValueError(f"{where}: image has no 'caption'; this is not a grounding json (use "
                         "register_coco_grounding for detection jsons)")
    for key in IMAGE_KEYS:
        if key in img:
            record[key] = img[key]
    caption = record["caption"]
    for ann in record["annotations"]:
        if "tokens_positive" not in ann:
            raise ValueError(f"{where}: an annotation has no 'tokens_positive'")
        _check_spans(ann["tokens_positive"], caption, where)
    record["boxes_eval"] = [_xywh_to_xyxy(a["bbox"]) for a in record["annotations"]]
    if "tokens_positive_eval" in record:
        phrase_boxes = []
        for i, phrase_spans in enumerate(record["tokens_positive_eval"]):
            _check_spans(phrase_spans, caption, f"{where}, tokens_positive_eval[{i}]")
            phrase_boxes.append(
                [box for box, ann in zip(record["boxes_eval"], record["annotations"])
                 if _spans_overlap(ann["tokens_positive"], phrase_spans)]
            )
        record["phrase_boxes_eval"] = phrase_boxes


def load_grounding_json(
    json_file: str, image_root: str | dict[str, str], dataset_name: str | None = None
) -> list[dict]:
    """Load an MDETR-style grounding json into detectron2 dicts (see the module docstring for extra fields).

    Args:
        json_file: COCO json whose images have ``caption`` and annotations ``tokens_positive``.
        image_root: folder of the images, or for GoldG ("mixed") a dict from each image's ``data_source``
            (e.g. ``"coco"``, ``"vg"``) to its folder.
        dataset_name: when given, detectron2 sets ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` of that name from the json, and ``category_id`` becomes
            contiguous 0-based.
    """
    roots = dict(image_root) if isinstance(image_root, Mapping) else None
    records = load_coco_json(
        json_file, "" if roots else image_root, dataset_name, extra_annotation_keys=ANNOTATION_KEYS
    )
    # Second read for the image-level keys load_coco_json drops (cost: one more json parse).
    with PathManager.open(json_file, "r") as f:
        images = {img["id"]: img for img in json.load(f)["images"]}
    for record in records:
        img = images[record["image_id"]]
        where = f"{json_file}, image id {record['image_id']}"
        if roots is not None:
            source = img.get("data_source")
            if source not in roots:
                raise ValueError(f"{where}: data_source {source!r} has no image folder; known: {sorted(roots)}")
            record["file_name"] = os.path.join(roots[source], img["file_name"])
        _add_grounding_fields(record, img, where)
    return records


def register_mdetr_grounding(
    name: str,
    json_file: str,
    image_root: str | dict[str, str],
    evaluator_type: str = "flickr",
    metadata: dict | None = None,
) -> None:
    """Register one grounding json; nothing is read until ``DatasetCatalog.get(name)``.

    Example::

        register_mdetr_grounding("my_flickr_val", "mdetr_annotations/final_flickr_separateGT_val.json",
                                 "flickr30k/flickr30k_images/val", evaluator_type="flickr")

    ``evaluator_type``: ``"flickr"`` (phrase grounding Recall@k), ``"refexp"`` (RefCOCO/+/g precision@k) or
    ``"mixed"`` (GoldG; training only). ``metadata``: extra metadata (e.g. ``flickr_subset``).
    """
    if isinstance(image_root, Mapping):
        image_root = dict(image_root)
    DatasetCatalog.register(name, lambda: load_grounding_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type=evaluator_type, **(metadata or {})
    )


def _builtin_table() -> dict[str, dict]:
    """name -> (json_file, image_root, evaluator_type, extra metadata), paths relative to the datasets root."""
    table = {}
    for split in ("train", "val", "test"):
        table[f"flickr30k_{split}"] = {
            "json_file": f"mdetr_annotations/final_flickr_separateGT_{split}.json",
            "image_root": f"flickr30k/flickr30k_images/{split}",
            "evaluator_type": "flickr",
            "metadata": {"flickr_subset": split, "flickr_entities_root": "flickr30k"},
        }
    refexp_splits = {
        "refcoco": ("train", "val", "testA", "testB"),
        "refcoco+": ("train", "val", "testA", "testB"),
        "refcocog": ("train", "val", "test"),
    }
    for dataset, splits in refexp_splits.items():
        for split in splits:
            table[f"{dataset}_{split}"] = {
                "json_file": f"mdetr_annotations/final_{dataset}_{split}.json",
                "image_root": "coco/train2014",  # RefCOCO/+/g images are COCO train2014 images
                "evaluator_type": "refexp",
                "metadata": {"refexp_dataset": dataset},
            }
    for suffix in ("", "_no_coco"):
        table[f"mixed_train{suffix}"] = {
            "json_file": f"mdetr_annotations/final_mixed_train{suffix}.json",
            "image_root": {"coco": "coco/train2014", "vg": "gqa/images"},
            "evaluator_type": "mixed",
            "metadata": {},
        }
    return table


#: Builtin grounding datasets: name -> paths relative to $DETECTRON2_DATASETS (GLIP's paths_catalog layout).
MDETR_BUILTIN = _builtin_table()


def register_all_mdetr(root: str) -> None:
    """Register :data:`MDETR_BUILTIN` under ``root`` (no disk access)."""
    for name, spec in MDETR_BUILTIN.items():
        image_root = spec["image_root"]
        if isinstance(image_root, dict):
            image_root = {k: os.path.join(root, v) for k, v in image_root.items()}
        else:
            image_root = os.path.join(root, image_root)
        metadata = dict(spec["metadata"])
        if "flickr_entities_root" in metadata:
            metadata["flickr_entities_root"] = os.path.join(root, metadata["flickr_entities_root"])
        register_mdetr_grounding(
            name, os.path.join(root, spec["json_file"]), image_root, spec["evaluator_type"], metadata
        )
