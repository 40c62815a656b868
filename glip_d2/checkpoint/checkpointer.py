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
  never destroys the previous checkpoint (same for the ``last_checkpoint`` tag).
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

__all__ = [
    "GLIPCheckpointer", "atomic_torch_save", "remove_stale_temp_files", "resolve_weights_path", "CONVERSION_INFO_KEY",
]

logger = logging.getLogger(__name__)

#: Entry of a converted checkpoint holding its provenance (source file, sha256, variant).
CONVERSION_INFO_KEY = "glip_d2_conversion"
_STRICT_KEY = "__glip_d2_strict_source__"


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

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, strict: bool = False, **checkpointables):
        """``strict``: every checkpoint (not only official/converted ones) must fit the model exactly."""
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict = strict
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

    def _load_model(self, checkpoint: Any):
        source = checkpoint.pop(_STRICT_KEY, None)
        if source is not None:
            weights = checkpoint["model"]
            consume_prefix_in_state_dict_if_present(weights, "module.")  # saved from a DDP-wrapped model
            comparison = compare_with_model(weights, self.model.state_dict())
            self._accept_fresh_glipv2(comparison, source)
            comparison.raise_if_any(source)
        return super()._load_model(checkpoint)

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
