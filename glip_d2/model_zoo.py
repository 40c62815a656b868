"""The GLIP model zoo: ready configs and models for the names of ``glip_d2.checkpoint.catalog``.

``get("GLIP-T_C")`` returns a ready model (weights fetched through the HF cache, converted on the fly);
``get_config(name)`` the config with ``MODEL.WEIGHTS = "glip_d2://NAME"``, which any ``GLIPCheckpointer``
(trainer, predictor) resolves.
"""
import os

import torch

from .checkpoint.catalog import HF_REPO, MODEL_ZOO, ZOO_PREFIX, ModelZooEntry, get_entry, list_models, register
from .checkpoint.hub import fetch_zoo_weights

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

__all__ = [
    "HF_REPO",
    "ModelZooEntry",
    "MODEL_ZOO",
    "list_models",
    "get_entry",
    "register",
    "get_config_file",
    "get_config",
    "get_weights_url",
    "get_weights_path",
    "get",
    "model_zoo_table",
]


def get_config_file(name: str) -> str:
    """Path of the entry's config file (checked to exist)."""
    entry = get_entry(name)
    path = entry.config_file if os.path.isabs(entry.config_file) else os.path.join(_CONFIG_DIR, entry.config_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file of model {entry.name!r} not found: {path}")
    return path


def get_weights_url(name: str) -> str:
    return ZOO_PREFIX + get_entry(name).name


def get_weights_path(name: str, **kwargs) -> str:
    """Local path of the entry's official weights (downloaded/cached; see ``glip_d2.checkpoint.hub``)."""
    return fetch_zoo_weights(get_entry(name), **kwargs)


def get_config(name: str, trained: bool = True):
    """detectron2 config of the entry, with ``MODEL.WEIGHTS = glip_d2://NAME`` (or empty if not ``trained``)."""
    from detectron2.config import get_cfg

    from .config import add_glip_config

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(get_config_file(name))
    cfg.MODEL.WEIGHTS = get_weights_url(name) if trained else ""
    # Zoo checkpoints hold the whole text encoder: no separate HF download needed. (For any MODEL.WEIGHTS the model
    # builders decide the same from the file's keys: glip_d2.checkpoint.resolve_text_pretrained.)
    if trained:
        cfg.MODEL.LANGUAGE.PRETRAINED = False
    return cfg


def get(name: str, device: str | None = None, trained: bool = True) -> torch.nn.Module:
    """Model of the entry in eval mode on ``device`` (default: CUDA if available), official weights loaded.

    With ``trained`` the model is built without random initialisation (seconds instead of tens of seconds):
    the checkpoint must then provide every parameter, which the strict checkpointer enforces.
    """
    from detectron2.modeling import build_model

    from .checkpoint import GLIPCheckpointer
    from .checkpoint.skeleton import build_model_uninitialized

    cfg = get_config(name, trained)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not trained:
        return build_model(cfg).eval()
    model = build_model_uninitialized(cfg)
    GLIPCheckpointer(model, strict=True).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def model_zoo_table() -> str:
    """Markdown table of the zoo (the README's model-zoo section)."""
    rows = [
        "| name | config | weights (HF `GLIPModel/GLIP`) | pre-train data | COCO 0-shot | COCO fine-tuned "
        "| LVIS minival AP (paper) | LVIS APr last / best | ODinW-13 0-shot |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in MODEL_ZOO.values():
        p = e.published
        rows.append(
            f"| `{e.name}` | `configs/{e.config_file}` | `{e.hf_filename}` | {e.pretrain_data} "
            f"| {_fmt(p.get('coco_zero_shot'))} | {_fmt(p.get('coco_finetuned'))} | {_fmt(p.get('lvis_minival_ap'))} "
            f"| {_fmt(p.get('lvis_minival_apr_last'))} / {_fmt(p.get('lvis_minival_apr_best'))} "
            f"| {_fmt(p.get('odinw13_zero_shot'))} |"
        )
    return "\n".join(rows)
