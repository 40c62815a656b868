"""Dataset registration: synthetic grounding data, detection jsons as grounding data, LVIS, MDETR-style grounding.

Importing this package registers the builtin names with default paths under ``$DETECTRON2_DATASETS``
(default ``./datasets``), as detectron2 does, without touching the disk; data is read on
``DatasetCatalog.get``. The synthetic datasets are registered (and generated) by :func:`register_synthetic`.
"""
import os

from .coco_grounding import (
    COCO_GROUNDING_BUILTIN,
    register_all_coco_grounding,
    register_coco_grounding,
    register_odinw,
)
from .lvis import (
    LVIS_BUILTIN,
    load_lvis_grounding_json,
    register_all_lvis_grounding,
    register_lvis_grounding,
)
from .mdetr import (
    MDETR_BUILTIN,
    load_grounding_json,
    register_all_mdetr,
    register_mdetr_grounding,
)
from .synthetic import CATEGORY_NAMES as SYNTHETIC_CATEGORY_NAMES
from .synthetic import (
    SYNTHETIC_DATASETS,
    generate_synthetic_dataset,
    register_synthetic,
    register_synthetic_from_cfg,
)

__all__ = [
    "COCO_GROUNDING_BUILTIN",
    "LVIS_BUILTIN",
    "MDETR_BUILTIN",
    "SYNTHETIC_CATEGORY_NAMES",
    "SYNTHETIC_DATASETS",
    "generate_synthetic_dataset",
    "load_grounding_json",
    "load_lvis_grounding_json",
    "register_coco_grounding",
    "register_lvis_grounding",
    "register_mdetr_grounding",
    "register_odinw",
    "register_synthetic",
    "register_synthetic_from_cfg",
]


def _register_builtin() -> None:
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    register_all_coco_grounding(root)
    register_all_lvis_grounding(root)
    register_all_mdetr(root)


_register_builtin()
