"""``CaptionDatasetMapper``: a captioning record -> model input with one reference (training) or all (test).

Why one random reference per training step: an image has several references (5 in COCO) that are all correct;
drawing one each time the image is seen trains on all of them without repeating images within an epoch (common
practice for COCO captioning). Evaluation needs every reference, for CIDEr's consensus, so test inputs carry them
all and no ``caption`` (the model must not see a reference at inference).

Images get the grounding mapper's resize (and, in training, flip) augmentations (``build_glip_augmentation``),
exactly as ``VQADatasetMapper``, so a grounding checkpoint sees the scales it was trained at. Records without
``height`` / ``width`` (the Karpathy format) take them from the decoded image.

Output: ``image`` (uint8 CHW tensor in INPUT.FORMAT), ``height`` / ``width`` (of the original image),
``image_id``, ``file_name`` and, in training, ``caption`` (one reference, surrounding whitespace removed), at test
time ``captions`` (all references, stripped; empty for an unannotated image). Token length is not checked here: the
model cuts captions at MODEL.CAPTION.MAX_LENGTH.
"""
import copy

import numpy as np
from detectron2.config import configurable
from detectron2.data import transforms as T

from .transforms import build_glip_augmentation, read_augmented_image

__all__ = ["CaptionDatasetMapper"]

_KEYS = ("file_name", "height", "width", "image_id")


def _references(record: dict) -> list[str]:
    """The record's references, stripped; a ValueError naming the image for one that is not a non-empty string."""
    image_id = record.get("image_id", "?")
    captions = record.get("captions", [])
    if isinstance(captions, str):
        raise ValueError(f"image_id {image_id}: 'captions' must be a list of strings, got one string")
    out = []
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"image_id {image_id}: reference caption {caption!r} is not a non-empty string")
        out.append(caption.strip())
    return out


class CaptionDatasetMapper:
    """Reads and resizes the image; picks one reference caption (training) or keeps them all (test)."""

    @configurable
    def __init__(self, is_train: bool, *, augmentations: list, image_format: str):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_glip_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        d = {k: copy.deepcopy(dataset_dict[k]) for k in _KEYS if k in dataset_dict}
        references = _references(dataset_dict)
        if self.is_train:
            if not references:
                raise ValueError(f"image_id {d.get('image_id', '?')}: a training record needs at least one caption "
                                 "('captions')")
            d["caption"] = references[np.random.randint(len(references))]
        else:
            d["captions"] = references

        d["image"], _ = read_augmented_image(d, self.image_format, self.augmentations)
        return d
