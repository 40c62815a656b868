"""detectron2's ``get_detection_dataset_dicts`` with every dataset validated right after ``DatasetCatalog.get``.

Validation has to see each dataset on its own (its ``thing_classes``) and before detectron2's class histogram,
which asserts on an out-of-range ``category_id``; so this repeats that function's short tail (crowd filtering,
keypoint filtering, metadata consistency, histogram) after validating. The trainer passes the result to
``build_detection_{train,test}_loader(dataset=...)``.
"""
import itertools
import logging

import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detectron2.data.detection_utils import check_metadata_consistency

from .report import DatasetValidationError
from .validate import validate_dataset_dicts

__all__ = ["get_validated_dataset_dicts", "validated_dataset_dicts_from_cfg"]

logger = logging.getLogger(__name__)


def get_validated_dataset_dicts(
    names,
    *,
    policy: str = "error",
    decode_sample: int = 16,
    image_format: str = "BGR",
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files=None,
    check_consistency: bool = True,
) -> list:
    """``get_detection_dataset_dicts`` (same arguments and result) plus :func:`validate_dataset_dicts` per name.

    Every dataset is checked before any error is raised, so one error lists the problems of all of them.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("no dataset names given")
    per_name, failed = [], []
    for name in names:
        dicts = DatasetCatalog.get(name)
        if isinstance(dicts, torchdata.Dataset):
            logger.warning(f"Dataset '{name}' is a torch Dataset, not a list of dicts: not validated")
            per_name.append(dicts)
            continue
        if not len(dicts):
            raise ValueError(f"Dataset '{name}' is empty!")
        try:
            dicts, report = validate_dataset_dicts(
                dicts, MetadataCatalog.get(name), policy, name=name, decode_sample=decode_sample,
                image_format=image_format,
            )
        except DatasetValidationError as e:
            failed.append(e)
            continue
        (logger.info if report.ok else logger.warning)("\n" + report.summary())
        per_name.append(dicts)
    if failed:
        if len(failed) == 1:
            raise failed[0]
        raise DatasetValidationError([r for e in failed for r in e.reports], "\n\n".join(str(e) for e in failed))

    if proposal_files is not None:
        if len(names) != len(proposal_files):
            raise ValueError(f"{len(names)} datasets but {len(proposal_files)} proposal files")
        per_name = [load_proposals_into_dataset(d, f) for d, f in zip(per_name, proposal_files)]
    if isinstance(per_name[0], torchdata.Dataset):
        return torchdata.ConcatDataset(per_name)
    dataset_dicts = list(itertools.chain.from_iterable(per_name))
    has_instances = "annotations" in dataset_dicts[0]
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if min_keypoints > 0 and has_instances:
        dataset_dicts = filter_images_with_few_keypoints(dataset_dicts, min_keypoints)
    if check_consistency and has_instances:
        try:
            class_names = MetadataCatalog.get(names[0]).thing_classes
            check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(dataset_dicts, class_names)
        except AttributeError:  # class names are not available for this dataset
            pass
    if not dataset_dicts:
        raise ValueError(f"No valid data found in {','.join(names)}.")
    return dataset_dicts


def validated_dataset_dicts_from_cfg(cfg, names, *, is_train: bool) -> list:
    """The dicts detectron2's train / test loader would build from ``cfg`` for ``names``, validated per
    ``DATASETS.ON_INVALID``."""
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        if is_train:
            proposal_files = cfg.DATASETS.PROPOSAL_FILES_TRAIN
        else:
            proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(n)] for n in names]
    return get_validated_dataset_dicts(
        names,
        policy=cfg.DATASETS.ON_INVALID,
        decode_sample=cfg.DATASETS.DECODE_CHECK_IMAGES,
        image_format=cfg.INPUT.FORMAT,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS if is_train else False,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if is_train and cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=proposal_files,
    )
