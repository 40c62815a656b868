"""Several tuned tasks over one loaded base model, switched by name.

Prompt tuning's promise is one deployed model for many tasks: each task adds a few hundred thousand numbers. A
:class:`TaskBank` holds the task files' tensors and, for every tensor any task changes, the base model's own value;
``activate(name)`` puts the base values back for the previous task's tensors and copies the new task's in, so the
model equals "base + that task file" exactly, and ``activate(None)`` gives the base model back.
"""
import logging
import os

import torch
from torch import nn

from ..checkpoint.checkpointer import resolve_weights_path
from ..checkpoint.errors import CheckpointError
from ..checkpoint.safe_load import sha256_of_file
from ..checkpoint.task_file import TaskInfo, fit_model_to_task, read_task_file, verify_base

__all__ = ["TaskBank"]

logger = logging.getLogger(__name__)


class TaskBank:
    """Task files loaded next to a base model (see the module docstring)."""

    def __init__(self, model: nn.Module, base_path: str = ""):
        """``base_path``: the base weights file the model was loaded from ("" = unknown: bases are not checked)."""
        self.model = model
        self.base_path = base_path
        self._base_sha: str | None = None
        self._tasks: dict[str, tuple[TaskInfo, dict[str, torch.Tensor]]] = {}
        self._base_values: dict[str, torch.Tensor] = {}
        self.active: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    def info(self, name: str) -> TaskInfo:
        return self._entry(name)[0]

    def _entry(self, name: str):
        if name not in self._tasks:
            raise KeyError(f"no task named {name!r}; loaded tasks: {self.names or 'none'} (add_task() loads one)")
        return self._tasks[name]

    def add(self, path: str, name: str | None = None) -> str:
        """Load a task file (its base must be this model's base); returns the task's name (file's, else ``name``)."""
        path = resolve_weights_path(path)
        found = read_task_file(path)
        if found is None:
            raise CheckpointError(f"{path} is not a task file (no tuning record): load whole checkpoints as MODEL.WEIGHTS")
        info, weights, _ = found
        name = name or info.name or os.path.splitext(os.path.basename(path))[0]
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already loaded; give another name")
        if self.base_path and info.base_sha256:
            if self._base_sha is None:
                self._base_sha = sha256_of_file(self.base_path)
            if self._base_sha != info.base_sha256:
                verify_base(info, self.base_path, path)  # raises with both names
        state = fit_model_to_task(self.model, weights, path)
        previous = self.active
        self.activate(None)  # base values are read with no task applied
        for key in weights:
            if key not in self._base_values:
                self._base_values[key] = state[key].detach().clone()
        self._tasks[name] = (info, {k: v.to(state[k].device, state[k].dtype) for k, v in weights.items()})
        logger.info("Task %r (%s, %d tensors) loaded from %s.", name, info.tuning_mode, len(weights), path)
        self.activate(previous)
        return name

    @torch.no_grad()
    def activate(self, name: str | None) -> None:
        """Make the model base + task ``name`` (None: the base model)."""
        if name == self.active:
            return
        target = self._entry(name)[1] if name is not None else {}
        state = self.model.state_dict()
        if self.active is not None:
            for key in self._tasks[self.active][1]:
                state[key].copy_(self._base_values[key])
        for key, value in target.items():
            state[key].copy_(value)
        self.active = name
