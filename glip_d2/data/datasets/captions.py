"""Image-captioning datasets (COCO captions, Karpathy splits) -> detectron2 records with all reference captions.

Why one record per image (not per caption): captioning is evaluated per image against all its references (CIDEr
needs several of them to measure consensus), and training draws one reference per step
(:class:`~glip_d2.data.caption_mapper.CaptionDatasetMapper`), so each epoch sees every image once with a different
sentence, as is common practice for COCO captioning.

Formats:

* COCO captions (``captions_train2014.json``, and what the synthetic set writes): ``{"images": [{"id",
  "file_name", "height", "width"}], "annotations": [{"image_id", "caption", "id"}]}``.
* Karpathy splits (``dataset_coco.json``): ``{"images": [{"filepath"?, "filename", "split" (train / val / test /
  restval), "cocoid"? , "imgid", "sentences": [{"raw", "tokens"}]}]}``. It has no image sizes: records leave
  ``height`` / ``width`` out and the mapper takes them from the decoded image (detectron2's
  ``check_image_size``). The usual "Karpathy train" is ``splits=("train", "restval")`` (113k images).

Records: ``file_name``, ``height`` / ``width`` (when known), ``image_id`` (COCO id; Karpathy: ``cocoid`` when
present, else ``imgid``) and ``captions`` (the references as given, in file order). Images without any caption are
dropped (logged): they can neither be trained on nor scored.

Registered sets carry ``evaluator_type="caption"`` in their metadata; that one field routes them to the caption
loaders (``glip_d2.engine.caption_data``) and the caption evaluator.
"""
import logging
import os
from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .vqa import read_json_with_list

__all__ = [
    "COCO_KARPATHY_BUILTIN",
    "KARPATHY_SPLITS",
    "load_coco_captions_json",
    "load_karpathy_json",
    "register_coco_captions",
    "register_caption_builtins_from_cfg",
    "register_karpathy_captions",
]

logger = logging.getLogger(__name__)

#: The split names of the Karpathy files; "restval" is the part of COCO val2014 that Karpathy training uses.
KARPATHY_SPLITS = ("train", "val", "test", "restval")


def _read(path: str, key: str, fmt: str) -> dict:
    return read_json_with_list(path, key, fmt)


def _check_caption(caption, where: str) -> str:
    """The caption as given, or a ValueError naming where it is: a caption must be a non-empty string."""
    if not isinstance(caption, str):
        raise ValueError(f"{where}: the caption must be a string, got {caption!r}")
    if not caption.strip():
        raise ValueError(f"{where}: the caption is empty")
    return caption


def _log_dropped(json_file: str, dropped: int, kept: int) -> None:
    if dropped:
        logger.info("%s: dropped %d images without captions (%d kept)", json_file, dropped, kept)


def load_coco_captions_json(json_file: str, image_root: str) -> list[dict]:
    """One record per captioned image of a COCO captions json (images in file order, references in annotation
    order). Raises ``FileNotFoundError`` for a missing json and ``ValueError`` (naming the annotation id) for a
    caption that is not a non-empty string or refers to an image not in ``images``."""
    data = _read(json_file, "images", "COCO captions")
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise ValueError(f"{json_file}: expected an 'annotations' list (COCO captions format)")
    records, by_id = [], {}
    for im in data["images"]:
        for key in ("id", "file_name"):
            if key not in im:
                raise ValueError(f"{json_file}: image {im!r} has no '{key}'")
        image_id = int(im["id"])
        if image_id in by_id:
            raise ValueError(f"{json_file}: image id {image_id} appears twice in 'images'")
        record = {"file_name": os.path.join(image_root, im["file_name"]),
                  **{k: int(im[k]) for k in ("height", "width") if k in im}, "image_id": image_id, "captions": []}
        by_id[image_id] = record
        records.append(record)
    for ann in annotations:
        ann_id = ann.get("id", "?")
        if "image_id" not in ann:
            raise ValueError(f"{json_file}: caption annotation id {ann_id} has no 'image_id'")
        record = by_id.get(int(ann["image_id"]))
        if record is None:
            raise ValueError(f"{json_file}: caption annotation id {ann_id} refers to image_id {ann['image_id']}, "
                             "which is not in 'images'")
        record["captions"].append(_check_caption(ann.get("caption"), f"{json_file}: caption annotation id {ann_id}"))
    kept = [r for r in records if r["captions"]]
    _log_dropped(json_file, len(records) - len(kept), len(kept))
    return kept


def _check_splits(splits) -> tuple[str, ...]:
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    bad = [s for s in splits if s not in KARPATHY_SPLITS]
    if not splits or bad:
        raise ValueError(f"Karpathy splits must be a non-empty subset of {KARPATHY_SPLITS}, got {splits}")
    return splits


def load_karpathy_json(json_file: str, image_root: str, splits: Sequence[str]) -> list[dict]:
    """Records of the images of a Karpathy split file whose ``split`` is in ``splits`` (e.g. ``("train",
    "restval")``), in file order; ``file_name`` = ``image_root/filepath/filename``; no ``height`` / ``width``.
    A sentence's caption is its ``raw`` text (``tokens`` joined by spaces when ``raw`` is absent)."""
    splits = _check_splits(splits)
    data = _read(json_file, "images", "Karpathy")
    records, dropped = [], 0
    for im in data["images"]:
        if im.get("split") not in splits:
            continue
        image_id = im.get("cocoid", im.get("imgid"))
        if image_id is None or "filename" not in im:
            raise ValueError(f"{json_file}: image {str(im)[:120]} needs 'filename' and 'cocoid' or 'imgid'")
        captions = []
        for j, sentence in enumerate(im.get("sentences", [])):
            if not isinstance(sentence, dict):
                raise ValueError(f"{json_file}: image {image_id}, sentence {j}: expected {{'raw', 'tokens'}}, got "
                                 f"{sentence!r}")
            text = sentence.get("raw")
            if text is None and isinstance(sentence.get("tokens"), list):
                text = " ".join(str(t) for t in sentence["tokens"])
            captions.append(_check_caption(text, f"{json_file}: image {image_id}, sentence "
                                                 f"{sentence.get('sentid', j)}"))
        if not captions:
            dropped += 1
            continue
        records.append({"file_name": os.path.join(image_root, im.get("filepath", ""), im["filename"]),
                        "image_id": int(image_id), "captions": captions})
    _log_dropped(json_file, dropped, len(records))
    return records


def _register(name: str, loader, **metadata) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(evaluator_type="caption", **metadata)


def register_coco_captions(name: str, json_file: str, image_root: str, metadata: dict | None = None) -> None:
    """Register a COCO captions json under ``name`` (records read on ``DatasetCatalog.get``). Metadata:
    ``evaluator_type="caption"``, ``json_file``, ``image_root`` and the extra fields of ``metadata``. Registering
    a name again replaces it."""
    _register(name, lambda: load_coco_captions_json(json_file, image_root), json_file=json_file,
              image_root=image_root, **(metadata or {}))


def register_karpathy_captions(name: str, json_file: str, image_root: str, splits: Sequence[str]) -> None:
    """Register the ``splits`` of a Karpathy split file under ``name`` (e.g. ``"coco_karpathy_train"`` with
    ``("train", "restval")``); ``image_root`` is the folder holding ``train2014/`` and ``val2014/``. Metadata as
    :func:`register_coco_captions`, plus ``splits``."""
    splits = _check_splits(splits)
    _register(name, lambda: load_karpathy_json(json_file, image_root, splits), json_file=json_file,
              image_root=image_root, splits=list(splits))


#: Builtin COCO Karpathy splits: name -> Karpathy splits. Files: ``$DETECTRON2_DATASETS/coco/annotations/
#: dataset_coco.json`` and the images under ``$DETECTRON2_DATASETS/coco/`` (``train2014/``, ``val2014/``).
COCO_KARPATHY_BUILTIN = {
    "coco_karpathy_train": ("train", "restval"),
    "coco_karpathy_val": ("val",),
    "coco_karpathy_test": ("test",),
}


def register_caption_builtins_from_cfg(cfg) -> list[str]:
    """Register the builtin COCO Karpathy splits that DATASETS.TRAIN/TEST name; returns their names."""
    root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "coco")
    used = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if n in COCO_KARPATHY_BUILTIN]
    for name in used:
        register_karpathy_captions(name, os.path.join(root, "annotations", "dataset_coco.json"), root,
                                   COCO_KARPATHY_BUILTIN[name])
    return used
