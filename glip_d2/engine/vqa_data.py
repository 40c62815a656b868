"""Data loaders for VQA datasets (``evaluator_type == "vqa"``), used by ``GLIPTrainer``'s loader builders.

Why separate from the grounding loaders: a VQA record is a question with soft answer targets, not an image with
boxes to validate, so it goes through ``VQADatasetMapper`` and skips the box checks of
``glip_d2.data.validation``. The dataset's registered metadata decides (``register_vqa`` sets evaluator_type
"vqa"), so any model config can train or evaluate on VQA data and the evaluator follows from the same field.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader

from ..data.vqa_mapper import VQADatasetMapper

__all__ = ["build_vqa_test_loader", "build_vqa_train_loader", "is_vqa_data"]


def is_vqa_data(names) -> bool:
    """True when every named (registered) dataset is a VQA set; a mix of VQA and other sets is an error."""
    names = list(names)
    kinds = [MetadataCatalog.get(n).get("evaluator_type", None) == "vqa" for n in names]
    if any(kinds) and not all(kinds):
        vqa = [n for n, k in zip(names, kinds) if k]
        raise ValueError(f"DATASETS mixes VQA sets {vqa} with other kinds of data {sorted(set(names) - set(vqa))}; "
                         "one loader reads one kind")
    return bool(names) and all(kinds)


def _records(names) -> list[dict]:
    records = [r for n in names for r in DatasetCatalog.get(n)]
    if not records:
        raise ValueError(f"VQA datasets {list(names)} have no questions")
    return records


def build_vqa_train_loader(cfg):
    """detectron2's training loader over DATASETS.TRAIN's questions (records without answers are refused)."""
    records = _records(cfg.DATASETS.TRAIN)
    unanswered = [r["question_id"] for r in records if "answer_ids" not in r]
    if unanswered:
        raise ValueError(f"{len(unanswered)} training questions have no annotations (e.g. question_id "
                         f"{unanswered[0]}): train on a split with an annotations json")
    return build_detection_train_loader(cfg, mapper=VQADatasetMapper(cfg, is_train=True), dataset=records)


def build_vqa_test_loader(cfg, dataset_name: str):
    """detectron2's test loader over one VQA set, one question per batch."""
    return build_detection_test_loader(_records([dataset_name]), mapper=VQADatasetMapper(cfg, is_train=False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
