"""``GLIPCheckpointer``: detectron2's checkpointer, made safe and able to read official GLIP files.

What it adds to ``DetectionCheckpointer`` (used by the trainer, the predictor and the model zoo):
- ``MODEL.WEIGHTS`` may be a glip_d2 checkpoint, an official GLIP ``.pth`` (converted on the fly, one log line
  says so) or a model-zoo URL ``glip_d2://NAME``;
- every file is read with ``torch.load(weights_only=True)`` (``.pkl`` with a numpy-only unpickler), so a file that
  would execute code is refused and a damaged file gives a clear error;
- official and converted-official weights must fit the model exactly (keys both ways and shapes), otherwise a
  ``CheckpointMismatchError`` / ``WrongVariantError`` lists every difference; other glip_d2 checkpoints keep
  detectron2's lenient behaviour (partial loads for fine-tuning) unless ``strict=True``;
- ``save()`` writes to a temporary file in the same folder and renames it over the target, so an interrupted save
  never destroys the previous checkpoint (same for the ``last_checkpoint`` tag);
- task files (:mod:`.task_file`): with ``task_info`` the saves hold only the tuned tensors; loading a task file
  loads its base weights first (sha256-checked), then the tuned tensors, which must all fit the model.
"""
import glob
import logging
import os
import tempfile
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .convert import (
    compare_with_model,
    convert_official_checkpoint,
    is_official_state_dict,
)
from .errors import CheckpointError
from .hub import ZOO_PREFIX, register_path_handler, resolve_zoo_url
from .safe_load import load_checkpoint_file
from .task_file import TASK_INFO_KEY, TaskInfo, fit_model_to_task, task_state_dict, verify_base

__all__ = [
    "GLIPCheckpointer", "atomic_torch_save", "remove_stale_temp_files", "resolve_weights_path", "CONVERSION_INFO_KEY",
]

logger = logging.getLogger(__name__)

#: Entry of a converted checkpoint holding its provenance (source file, sha256, variant).
CONVERSION_INFO_KEY = "glip_d2_conversion"
_STRICT_KEY = "__glip_d2_strict_source__"
#: In a compact checkpoint: state-dict prefixes deliberately left out (the model keeps its own, pretrained, tensors).
OMITTED_PREFIXES_KEY = "omitted_prefixes"
_TASK_SOURCE_KEY = "__glip_d2_task_source__"


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def remove_stale_temp_files(folder: str) -> list:
    """Delete the hidden ``.NAME.XXXX.tmp`` files that saves killed mid-write left in ``folder``; returns them.

    Only call it where no save can be running (the main process, before or between its own saves).
    """
    stale = sorted(glob.glob(os.path.join(glob.escape(folder), ".*.tmp")))
    for tmp in stale:
        os.remove(tmp)
        logger.info("Removed %s, left by an interrupted checkpoint save.", tmp)
    return stale


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; a plain open() would follow the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace``: ``path`` is never left half-written."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def resolve_weights_path(path: str, path_manager=None) -> str:
    """Local file for ``MODEL.WEIGHTS``: zoo URLs are fetched, other URLs go through the path manager."""
    if path.startswith(ZOO_PREFIX):
        return resolve_zoo_url(path)
    if os.path.isfile(path):
        return path
    if "://" in path and path_manager is not None:
        return path_manager.get_local_path(path)
    raise FileNotFoundError(f"Checkpoint file not found: {path!r} (MODEL.WEIGHTS)")


class GLIPCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with safe loading, official-GLIP conversion, ``glip_d2://`` URLs and atomic saves."""

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        save_to_disk=None,
        strict: bool = False,
        task_info: TaskInfo | None = None,
        task_base_weights: str = "",
        **checkpointables,
    ):
        """``strict``: every checkpoint (not only official/converted ones) must fit the model exactly.
        ``task_info``: save task files (the trainable tensors + this info) instead of the whole model.
        ``task_base_weights``: the base weights to load under a task file instead of the one it records."""
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict = strict
        self.task_info = task_info
        self.task_base_weights = task_base_weights
        register_path_handler()
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            remove_stale_temp_files(self.save_dir)  # a run killed while saving; resuming starts clean

    # ---------------------------------------------------------------- loading
    def load(self, path, *args, **kwargs):
        if path:
            path = resolve_weights_path(path, self.path_manager)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> dict[str, Any]:
        data = load_checkpoint_file(filename)
        if filename.endswith(".pkl"):
            return self._detectron_pkl(data)
        if filename.endswith(".pyth"):  # pycls, as detectron2 reads it
            return {"model": {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")},
                    "__author__": "pycls", "matching_heuristics": True}
        if not isinstance(data, dict):
            raise CheckpointError(f"{filename} holds a {type(data).__name__}, not a checkpoint dict.")
        if TASK_INFO_KEY in data:
            self._load_task_base(TaskInfo.from_dict(data[TASK_INFO_KEY], where=filename), filename)
            data[_TASK_SOURCE_KEY] = f"task file {filename}"
            return data
        weights = data.get("model", data)
        if isinstance(weights, dict) and is_official_state_dict(weights):
            result = convert_official_checkpoint(data)
            logger.info(
                "%s is an official GLIP checkpoint (%s): converted to glip_d2 names on the fly "
                "(%d tensors mapped, %d dropped).",
                filename, result.architecture.name, len(result.mapped), len(result.dropped),
            )
            # only the weights: an official optimizer/scheduler state must never reach our checkpointables
            return {"model": result.state_dict, _STRICT_KEY: f"official GLIP checkpoint {filename}"}
        if "model" not in data:
            data = {"model": data}
        if CONVERSION_INFO_KEY in data:
            data[_STRICT_KEY] = f"converted GLIP checkpoint {filename}"
        elif self.strict:
            data[_STRICT_KEY] = f"checkpoint {filename}"
        return data

    @staticmethod
    def _detectron_pkl(data) -> dict[str, Any]:
        """detectron2's ``.pkl`` handling (model-zoo or Caffe2 format), on safely unpickled data."""
        if "model" in data and "__author__" in data:
            return data
        if "blobs" in data:
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_task_base(self, info: TaskInfo, filename: str) -> None:
        """Load the base weights a task file was tuned from (``task_base_weights`` overrides the recorded name)."""
        base = self.task_base_weights or info.base_weights
        if not base:
            logger.warning("%s was tuned from a randomly initialised model: only its tuned tensors are loaded.", filename)
            return
        path = resolve_weights_path(base, self.path_manager)
        verify_base(info, path, filename)
        logger.info("%s is a %r task file: loading its base weights %s first.", filename, info.tuning_mode, base)
        if self.task_info is not None:  # a run continuing from a task file: its own task files keep that base
            self.task_info.base_weights, self.task_info.base_sha256 = base, info.base_sha256
        base_checkpoint = self._load_file(path)
        if _TASK_SOURCE_KEY in base_checkpoint:
            raise CheckpointError(f"{filename}: its base {base} is itself a task file; give the original base weights")
        incompatible = self._load_model(base_checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)

    def _load_task_tensors(self, checkpoint: dict, source: str) -> None:
        weights = checkpoint.pop("model")
        consume_prefix_in_state_dict_if_present(weights, "module.")
        state = fit_model_to_task(self.model, weights, source)
        with torch.no_grad():
            for key, value in weights.items():
                state[key].copy_(value)
        logger.info("Loaded %d tuned tensors from %s.", len(weights), source)

    def _load_model(self, checkpoint: Any):
        task_source = checkpoint.pop(_TASK_SOURCE_KEY, None)
        if task_source is not None:
            checkpoint.pop(TASK_INFO_KEY, None)
            self._load_task_tensors(checkpoint, task_source)
            return None
        source = checkpoint.pop(_STRICT_KEY, None)
        if source is not None:
            weights = checkpoint["model"]
            consume_prefix_in_state_dict_if_present(weights, "module.")  # saved from a DDP-wrapped model
            comparison = compare_with_model(weights, self.model.state_dict())
            self._accept_fresh_glipv2(comparison, source)
            comparison.raise_if_any(source)
        omitted = tuple(checkpoint.pop(OMITTED_PREFIXES_KEY, None) or ())
        incompatible = super()._load_model(checkpoint)
        if omitted and incompatible is not None:  # a compact file (glip_d2.embedded_model): left out by design
            left_out = [k for k in incompatible.missing_keys if k.startswith(omitted)]
            logger.info("%d tensors under %s are not in the file by design: the model keeps its own (pretrained).",
                        len(left_out), ", ".join(omitted))
            incompatible = incompatible._replace(
                missing_keys=[k for k in incompatible.missing_keys if not k.startswith(omitted)])
        return incompatible

    def _accept_fresh_glipv2(self, comparison, source: str) -> None:
        """A GLIP checkpoint starts GLIPv2 pre-training: the GLIPv2 parameters (MLM head, region-word projections,
        all under the model's ``glipv2.``) cannot be in it and keep their fresh initialisation. Only those keys
        are forgiven; anything else missing still fails the strict check."""
        from ..modeling.glipv2.objectives import GLIPV2_STATE_PREFIX

        fresh = [k for k in comparison.missing if k.startswith(GLIPV2_STATE_PREFIX)]
        if fresh:
            comparison.missing = [k for k in comparison.missing if not k.startswith(GLIPV2_STATE_PREFIX)]
            logger.info("%s has no GLIPv2 parameters: %d initialised fresh: %s", source, len(fresh), ", ".join(fresh))

    # ----------------------------------------------------------------- saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # remote storage: no atomic rename, fall back to detectron2
            return super().save(name, **kwargs)
        if self.task_info is not None:  # only what was tuned, and where it was tuned from
            data = {"model": task_state_dict(self.model), TASK_INFO_KEY: self.task_info.to_dict()}
        else:
            data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        remove_stale_temp_files(self.save_dir)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename.encode())
        )
