"""Training, evaluation and inference entry points (trainer, optimizer groups, EMA, multi-scale test, predictor)."""
from .ema import ModelEMA
from .hooks import EMAHook
from .optimizer import (
    build_glip_lr_scheduler,
    build_glip_optimizer,
    build_gradient_clipper,
    get_glip_param_groups,
)
from .trainer import GLIPTrainer, GLIPTrainStep
from .tta import test_with_tta

__all__ = [
    "EMAHook",
    "GLIPTrainStep",
    "GLIPTrainer",
    "ModelEMA",
    "build_glip_lr_scheduler",
    "build_glip_optimizer",
    "build_gradient_clipper",
    "get_glip_param_groups",
    "test_with_tta",
]
