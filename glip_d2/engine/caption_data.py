"""Data loaders for image-captioning datasets (``evaluator_type == "caption"``).

Why separate from the grounding loaders: a captioning record is an image with reference sentences, not boxes to
validate, so it goes through ``CaptionDatasetMapper`` and skips the box checks of ``glip_d2.data.validation``. The
dataset's registered metadata decides (``register_coco_captions`` / ``register_karpathy_captions`` set
evaluator_type "caption"), so any model config can train or evaluate on captions and the evaluator follows from
the same field.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader

from ..data.caption_mapper import CaptionDatasetMapper

__all__ = ["build_caption_test_loader", "build_caption_train_loader", "is_caption_data"]


def is_caption_data(names) -> bool:
    """True when every named (registered) dataset is a captioning set; a mix of captions and other sets is an
    error."""
    names = list(names)
    kinds = [MetadataCatalog.get(n).get("evaluator_type", None) == "caption" for n in names]
    if any(kinds) and not all(kinds):
        captions = [n for n, k in zip(names, kinds) if k]
        raise ValueError(f"DATASETS mixes captioning sets {captions} with other kinds of data "
                         f"{sorted(set(names) - set(captions))}; one loader reads one kind")
    return bool(names) and all(kinds)


def _records(names) -> list[dict]:
    records = [r for n in names for r in DatasetCatalog.get(n)]
    if not records:
        raise ValueError(f"captioning datasets {list(names)} have no captioned images")
    return records


def build_caption_train_loader(cfg):
    """detectron2's training loader over DATASETS.TRAIN's images, one random reference per image and step (records
    without captions are refused)."""
    records = _records(cfg.DATASETS.TRAIN)
    uncaptioned = [r.get("image_id") for r in records if not r.get("captions")]
    if uncaptioned:
        raise ValueError(f"{len(uncaptioned)} training images have no captions (e.g. image_id {uncaptioned[0]}): "
                         "train on a split with reference captions")
    return build_detection_train_loader(cfg, mapper=CaptionDatasetMapper(cfg, is_train=True), dataset=records)


def build_caption_test_loader(cfg, dataset_name: str):
    """detectron2's test loader over one captioning set, one image per batch, with all its references."""
    return build_detection_test_loader(_records([dataset_name]), mapper=CaptionDatasetMapper(cfg, is_train=False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
