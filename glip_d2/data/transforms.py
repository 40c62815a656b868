"""GLIP's input augmentations as detectron2 ``Augmentation``s (official detail 8).

* :class:`GLIPResizeShortestEdge`: the official (torchvision-style) resize rule -- shorter side ``size``; if the
  longer side would exceed ``max_size``, ``size = int(round(max_size * short / long))``; the longer side is then
  ``int(size * long / short)`` (truncated, where detectron2's ResizeShortestEdge rounds). PIL bilinear.
* :class:`GLIPRandomFlip`: horizontal flip whose box/polygon x maps to ``W - 1 - x`` like the official
  ``BoxList.transpose`` (legacy "+1" geometry, official detail 7), or to detectron2's ``W - x``.
"""
import sys
from collections.abc import Sequence

import numpy as np
from detectron2.data import transforms as T
from detectron2.data.transforms import ResizeTransform
from fvcore.transforms.transform import HFlipTransform, NoOpTransform
from PIL import Image

__all__ = ["GLIPRandomFlip", "GLIPResizeShortestEdge", "LegacyHFlipTransform", "build_glip_augmentation"]


class GLIPResizeShortestEdge(T.Augmentation):
    """Resize keeping the aspect ratio with the official size rule (long side truncated unless ``truncate=False``)."""

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "choice",
        interp=Image.BILINEAR,
        truncate: bool = True,
    ):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"'range' sampling needs [min, max] short edge lengths, got {short_edge_length}")
        self.short_edge_length = short_edge_length
        self.max_size = max_size
        self.sample_style = sample_style
        self.is_range = sample_style == "range"
        self.interp = interp
        self.truncate = truncate

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.is_range:
            size = int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(np.random.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        newh, neww = self.get_output_shape(h, w, size, self.max_size, self.truncate)
        if (newh, neww) == (h, w):
            return NoOpTransform()
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(h: int, w: int, size: int, max_size: int, truncate: bool = True) -> tuple[int, int]:
        """(new_h, new_w) for an (h, w) image; ``truncate=False`` gives detectron2's rounding instead."""
        if not truncate:
            return T.ResizeShortestEdge.get_output_shape(h, w, size, max_size)
        short, long = float(min(h, w)), float(max(h, w))
        if max_size is not None and long / short * size > max_size:
            size = round(max_size * short / long)
        if (w <= h and w == size) or (h <= w and h == size):
            return h, w
        if w < h:
            return int(size * h / w), size
        return size, int(size * w / h)


class LegacyHFlipTransform(HFlipTransform):
    """Horizontal flip mapping coordinates x -> W - 1 - x (official ``BoxList.transpose``, TO_REMOVE = 1)."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = self.width - 1 - coords[:, 0]
        return coords


class GLIPRandomFlip(T.Augmentation):
    """Horizontal flip with probability ``prob``; ``legacy_offset`` selects :class:`LegacyHFlipTransform`."""

    def __init__(self, prob: float = 0.5, legacy_offset: bool = True):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = prob
        self.legacy_offset = legacy_offset

    def get_transform(self, image):
        if self._rand_range() < self.prob:
            w = image.shape[1]
            return LegacyHFlipTransform(w) if self.legacy_offset else HFlipTransform(w)
        return NoOpTransform()


def build_glip_augmentation(cfg, is_train: bool) -> list[T.Augmentation]:
    """Resize (+ flip in training) from INPUT.MIN/MAX_SIZE_*, INPUT.RESIZE_TRUNCATE, INPUT.FLIP_*."""
    if is_train:
        min_size, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sample_style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
    augs: list[T.Augmentation] = [
        GLIPResizeShortestEdge(min_size, max_size, sample_style, truncate=cfg.INPUT.RESIZE_TRUNCATE)
    ]
    if is_train and cfg.INPUT.FLIP_PROB_TRAIN > 0:
        augs.append(GLIPRandomFlip(cfg.INPUT.FLIP_PROB_TRAIN, legacy_offset=cfg.INPUT.FLIP_LEGACY_OFFSET))
    return augs


def read_augmented_image(dataset_dict: dict, image_format: str, augmentations: T.AugmentationList):
    """Read ``dataset_dict["file_name"]`` (filling in a missing height / width), apply ``augmentations``;
    returns (CHW uint8 tensor, the applied transforms) for mappers that add their own fields around the image."""
    import torch
    from detectron2.data import detection_utils as utils

    image = utils.read_image(dataset_dict["file_name"], format=image_format)
    utils.check_image_size(dataset_dict, image)
    aug_input = T.AugInput(image)
    transforms = augmentations(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))), transforms
