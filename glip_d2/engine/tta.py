"""Evaluation under GLIP's multi-scale test (``TEST.AUG.ENABLED``), detectron2 train_net's ``test_with_TTA``."""
import logging
import os
from collections import OrderedDict

from ..data.tta_mapper import GLIPDatasetMapperTTA
from ..modeling.test_time_augmentation import GLIPWithTTA

__all__ = ["test_with_tta"]

logger = logging.getLogger(__name__)


def test_with_tta(trainer_cls, cfg, model) -> OrderedDict:
    """Evaluate ``model`` wrapped in :class:`GLIPWithTTA` on DATASETS.TEST with the trainer's evaluators; results
    are keyed like ``trainer_cls.test``'s with a ``_TTA`` suffix and written under OUTPUT_DIR/inference_TTA."""
    logger.info("Running inference with test-time augmentation ...")
    wrapped = GLIPWithTTA(cfg, model, GLIPDatasetMapperTTA(cfg))
    evaluators = [
        trainer_cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
        for name in cfg.DATASETS.TEST
    ]
    results = trainer_cls.test(cfg, wrapped, evaluators)
    return OrderedDict((k + "_TTA", v) for k, v in results.items())
