"""Exponential moving average of model weights (official ``SOLVER.MODEL_EMA``; here ``SOLVER.EMA_DECAY``).

After every optimizer step: ``ema = decay · ema + (1 − decay) · weights`` for every floating-point entry of the
state dict (parameters and float buffers), as the official ``ModelEma``. Integer buffers (index tables such as
Swin's ``relative_position_index``) are copied instead: averaging them and writing back into an integer tensor
would truncate 167.9999 to 167. No decay warm-up, as official. The copy lives on the model's device, in eval mode.
Saved in checkpoints under ``"model_ema"`` (the official key) by registering it as a checkpointable.
"""
import copy
from typing import Dict

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """An EMA copy of a model, updated with :meth:`update` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_loads = 0  # how many times a saved EMA was loaded (the trainer restarts it from weights if never)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = unwrap_model(model).state_dict()
        for name, ema_v in self.module.state_dict().items():
            new_v = current[name].detach()
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(new_v.to(ema_v.dtype), alpha=1.0 - self.decay)
            else:
                ema_v.copy_(new_v)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s current weights."""
        self.module.load_state_dict(unwrap_model(model).state_dict())

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Strict load: an EMA from another architecture is an error, not a partial load."""
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        self.module.load_state_dict(state_dict, strict=True)
        self.num_loads += 1
