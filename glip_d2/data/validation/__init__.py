"""Dataset validation at load time: image files, boxes, categories and caption spans, per ``DATASETS.ON_INVALID``.

``validate_dataset_dicts`` checks one dataset's dicts; ``get_validated_dataset_dicts`` is detectron2's
``get_detection_dataset_dicts`` with that check per dataset (what the trainer's loaders and
``tools/check_dataset.py`` use). ``DatasetReport.summary()`` is the text a user reads before training starts.
"""
from .loading import get_validated_dataset_dicts, validated_dataset_dicts_from_cfg
from .report import POLICIES, PROBLEMS, DatasetReport, DatasetValidationError
from .validate import validate_dataset_dicts

__all__ = [
    "POLICIES",
    "PROBLEMS",
    "DatasetReport",
    "DatasetValidationError",
    "get_validated_dataset_dicts",
    "validate_dataset_dicts",
    "validated_dataset_dicts_from_cfg",
]
