"""Task checkpoints: what a transfer run tuned, plus a reference to the base weights it was tuned from.

Prompt tuning and linear probing change a few thousand parameters of a model with tens or hundreds of millions, so
their checkpoints hold only those tensors (``"model"``) and a :class:`TaskInfo` (``"glip_d2_task"``): the tuning
mode, the base weights as given in ``MODEL.WEIGHTS`` (a path or a ``glip_d2://`` zoo name) with the base file's
sha256, and the task's vocabulary and separator, so the prompt the offset was tuned for can be rebuilt.
Loading base + task file gives the tuned model bit for bit (``GLIPCheckpointer`` does it for any ``MODEL.WEIGHTS``
that is a task file); several task files can share one loaded base (``glip_d2.engine.task_bank``).
"""
import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import CheckpointError, CheckpointMismatchError, ChecksumMismatchError
from .safe_load import load_checkpoint_file, sha256_of_file

__all__ = [
    "TASK_INFO_KEY", "TaskInfo", "base_sha256", "check_task_tensors", "fit_model_to_task", "peek_task_info", "read_task_file", "task_state_dict",
    "verify_base",
]

#: Checkpoint entry holding the task's :class:`TaskInfo` (its presence makes a file a task file).
TASK_INFO_KEY = "glip_d2_task"
TASK_FORMAT_VERSION = 1


@dataclass
class TaskInfo:
    """Everything besides the tuned tensors that a task file records."""

    tuning_mode: str
    base_weights: str  # MODEL.WEIGHTS of the run: a path or a glip_d2:// zoo name ("" = random initialisation)
    base_sha256: str  # of the base file ("" when there was none)
    thing_classes: list[str] | None = None  # the task's vocabulary, in prompt order
    separator: str = ". "  # INPUT.PROMPT.SEPARATOR the prompt was built with
    name: str = ""  # a name for the task (default: the training dataset's)
    version: int = field(default=TASK_FORMAT_VERSION)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "task file") -> "TaskInfo":
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: '{TASK_INFO_KEY}' is a {type(data).__name__}, expected a dict")
        missing = [k for k in ("tuning_mode", "base_weights", "base_sha256") if k not in data]
        if missing:
            raise CheckpointError(f"{where}: '{TASK_INFO_KEY}' lacks {missing}")
        if int(data.get("version", 1)) > TASK_FORMAT_VERSION:
            raise CheckpointError(
                f"{where} was written by a newer glip_d2 (task format {data['version']} > {TASK_FORMAT_VERSION})"
            )
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("thing_classes") is not None:
            known["thing_classes"] = [str(c) for c in known["thing_classes"]]
        return cls(**known)


def task_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters (``requires_grad``) by state-dict name, detached copies; a DDP ``module.`` prefix is
    dropped so the file loads into an unwrapped model."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name[len("module."):] if name.startswith("module.") else name] = p.detach().clone().cpu()
    if not out:
        raise CheckpointError("the model has no trainable parameter: there is nothing to save in a task file")
    return out


def read_task_file(path: str) -> tuple[TaskInfo, dict[str, torch.Tensor], dict] | None:
    """(info, tuned tensors, the whole checkpoint dict) of a task file, or None when ``path`` is not one."""
    data = load_checkpoint_file(path)
    if not isinstance(data, dict) or TASK_INFO_KEY not in data:
        return None
    info = TaskInfo.from_dict(data[TASK_INFO_KEY], where=path)
    weights = data.get("model")
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: a task file needs a non-empty 'model' dict of tensors")
    return info, weights, data


def base_sha256(path: str) -> str:
    """sha256 of a base weights file ("" for no file)."""
    return sha256_of_file(path) if path else ""


def verify_base(info: TaskInfo, base_path: str, where: str) -> None:
    """The base file must be the one the task was tuned from (same sha256), or the tuned tensors mean nothing."""
    if not info.base_sha256:
        return
    if not base_path or not os.path.isfile(base_path):
        raise CheckpointError(f"{where} was tuned from {info.base_weights!r}, which is not available here")
    actual = sha256_of_file(base_path)
    if actual != info.base_sha256:
        raise ChecksumMismatchError(
            f"{where} was tuned from {info.base_weights!r} (sha256 {info.base_sha256[:12]}...) but the base weights "
            f"{base_path!r} have sha256 {actual[:12]}...: load the task into the model it was tuned from "
            "(MODEL.TASK_BASE_WEIGHTS names the base when it moved)"
        )


def fit_model_to_task(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> dict:
    """The model's state dict, ready for ``weights``: a prompt offset added when the task has one and the model not
    (zeros: the base outputs are unchanged), every tuned tensor checked to exist with its shape."""
    if any(k.startswith("prompt_offset.") for k in weights) and getattr(model, "prompt_offset", 1) is None:
        model.add_prompt_offset()
    state = model.state_dict()
    check_task_tensors(weights, state, where)
    return state


def check_task_tensors(weights: dict[str, torch.Tensor], model_state: dict, where: str) -> None:
    """Every tuned tensor must exist in the model with the same shape (a task file never loads partially)."""
    unknown = sorted(k for k in weights if k not in model_state)
    wrong = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in weights.items() if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    )
    if unknown or wrong:
        lines = [f"{where} does not fit the model:"]
        lines += [f"  not in the model: {k}" for k in unknown] + [f"  shape: {w}" for w in wrong]
        raise CheckpointMismatchError("\n".join(lines))


def peek_task_info(path: str) -> TaskInfo | None:
    """The :class:`TaskInfo` of a task file, or None for any other checkpoint; tensors are memory-mapped, not read,
    so asking this of a multi-GB base checkpoint costs little."""
    data = load_checkpoint_file(path, mmap=True)
    if not isinstance(data, dict) or TASK_INFO_KEY not in data:
        return None
    return TaskInfo.from_dict(data[TASK_INFO_KEY], where=path)
