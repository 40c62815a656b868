"""Exponential moving average of model weights (official ``SOLVER.MODEL_EMA``; here ``SOLVER.EMA_DECAY``).

After every optimizer step: ``ema = decay · ema + (1 − decay) · weights`` for every floating-point entry of the
state dict (parameters and float buffers), as the official ``ModelEma``; integer buffers (index tables such as
Swin's ``relative_position_index``) are copied, since averaging them would truncate. timm's ``ModelEmaV3`` does
exactly this; this class adds what the trainer needs around it: unwrapping DDP, a strict checkpointable state dict
(saved under ``"model_ema"``, the official key) and a count of loads. No decay warm-up, as official.
"""

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """An EMA copy of a model (``.module``, eval mode, no grads), updated with :meth:`update` after each step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self._ema = ModelEmaV3(unwrap_model(model), decay=self.decay)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_loads = 0  # how many times a saved EMA was loaded (the trainer restarts it from weights if never)

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self._ema.update(unwrap_model(model))

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s current weights."""
        self._ema.set(unwrap_model(model))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strict load: an EMA from another architecture is an error, not a partial load."""
        state_dict = dict(state_dict)
        consume_prefix_in_state_dict_if_present(state_dict, "module.")
        self.module.load_state_dict(state_dict, strict=True)
        self.num_loads += 1
