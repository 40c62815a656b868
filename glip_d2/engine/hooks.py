"""Training hooks that detectron2 does not ship."""
from detectron2.engine import HookBase

from .ema import ModelEMA

__all__ = ["EMAHook"]


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` after every optimizer step.

    Register it before ``PeriodicCheckpointer`` and ``EvalHook`` so that a checkpoint or evaluation made at an
    iteration already holds that iteration's average.
    """

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self):
        self.ema.update(self.trainer.model)
