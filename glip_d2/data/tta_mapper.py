"""The augmented copies of a test image for GLIP's multi-scale test (detectron2's ``DatasetMapperTTA`` role).

The official multi-scale test resizes the *original* image to every scale with GLIP's resize rule and flips after
resizing, so each copy is made from the image file when the dict names one (the test mapper's image is already
resized, and upsampling it again would blur the large scales); without a file the given image is used, as
detectron2 does.
"""
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager

from .transforms import GLIPResizeShortestEdge

__all__ = ["GLIPDatasetMapperTTA"]


class GLIPDatasetMapperTTA:
    """A mapped test dict -> one dict per (scale, flip), in that order, each with ``image`` (CHW uint8), the
    original ``height``/``width``, the prompt fields of the input, and ``tta`` = {"index", "min_size", "flip"}."""

    @configurable
    def __init__(self, min_sizes, max_size: int, flip: bool, image_format: str = "BGR", truncate: bool = True):
        self.min_sizes = [int(s) for s in min_sizes]
        if not self.min_sizes:
            raise ValueError("test-time augmentation needs at least one size (TEST.AUG.MIN_SIZES)")
        self.max_size = int(max_size)
        self.flip = bool(flip)
        self.image_format = image_format
        self.truncate = truncate

    @classmethod
    def from_config(cls, cfg):
        return {
            "min_sizes": cfg.TEST.AUG.MIN_SIZES,
            "max_size": cfg.TEST.AUG.MAX_SIZE,
            "flip": cfg.TEST.AUG.FLIP,
            "image_format": cfg.INPUT.FORMAT,
            "truncate": cfg.INPUT.RESIZE_TRUNCATE,
        }

    def _source_image(self, dataset_dict: dict) -> np.ndarray:
        file_name = dataset_dict.get("file_name")
        if file_name and PathManager.exists(file_name):
            return utils.read_image(file_name, format=self.image_format)
        if "image" not in dataset_dict:
            raise ValueError("test-time augmentation needs an 'image' or a readable 'file_name' in each input dict")
        return dataset_dict["image"].permute(1, 2, 0).cpu().numpy()

    def __call__(self, dataset_dict: dict) -> list[dict]:
        image = self._source_image(dataset_dict)
        height = dataset_dict.get("height", image.shape[0])
        width = dataset_dict.get("width", image.shape[1])
        out = []
        for index, size in enumerate(self.min_sizes):
            resize = GLIPResizeShortestEdge(size, self.max_size, truncate=self.truncate).get_transform(image)
            resized = resize.apply_image(image)
            for flip in (False, True) if self.flip else (False,):
                pixels = resized[:, ::-1] if flip else resized
                d = {k: v for k, v in dataset_dict.items() if k != "image"}
                d.update(
                    image=torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                    height=height, width=width, tta={"index": index, "min_size": size, "flip": flip},
                )
                out.append(d)
        return out
