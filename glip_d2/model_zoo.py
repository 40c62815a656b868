"""The GLIP model zoo: name -> config file, official weights on the Hugging Face hub, published numbers.

``get("GLIP-T_C")`` returns a ready model (weights fetched through the HF cache, converted on the fly);
``get_config(name)`` the config with ``MODEL.WEIGHTS = "glip_d2://NAME"``, which any ``GLIPCheckpointer``
(trainer, predictor) resolves. Published numbers are the README values of the released checkpoints and the GLIP
paper's (GLIP_REFERENCE.md §7.2), so an evaluation can be compared with what the file should reach.

Sizes and sha256 of the hub files are not recorded yet (they could not be read offline): they are None, and the
check runs as soon as a value is filled in (``ModelZooEntry.size_bytes`` / ``sha256``).
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch

from .checkpoint.hub import ZOO_PREFIX, fetch_zoo_weights

__all__ = [
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

HF_REPO = "GLIPModel/GLIP"
_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclass(frozen=True)
class ModelZooEntry:
    """One downloadable model: where its config and weights are and what it should score."""

    name: str
    config_file: str  # relative to configs/ (or absolute)
    hf_filename: str
    architecture: str  # glip_d2.checkpoint.KNOWN_ARCHITECTURES name
    pretrain_data: str
    hf_repo: str = HF_REPO
    revision: Optional[str] = None  # pinned hub commit; None = main
    size_bytes: Optional[int] = None  # checked when known
    sha256: Optional[str] = None  # checked when known
    # Published box AP / recall, keys: coco_zero_shot, coco_finetuned, lvis_minival_ap (paper Table 3),
    # lvis_minival_apr_last / lvis_minival_apr_best (README), odinw13_zero_shot.
    published: Mapping[str, Optional[float]] = field(default_factory=dict)
    notes: str = ""


def _pub(coco_zs, coco_ft, lvis_ap, apr_last, apr_best, odinw):
    return {
        "coco_zero_shot": coco_zs, "coco_finetuned": coco_ft, "lvis_minival_ap": lvis_ap,
        "lvis_minival_apr_last": apr_last, "lvis_minival_apr_best": apr_best, "odinw13_zero_shot": odinw,
    }


MODEL_ZOO: Dict[str, ModelZooEntry] = {
    e.name: e
    for e in [
        ModelZooEntry("GLIP-T_A", "GLIP-T_A.yaml", "glip_a_tiny_o365.pth", "GLIP-T(A)", "O365",
                      published=_pub(42.9, 52.9, 18.5, None, 14.2, 28.7)),
        ModelZooEntry("GLIP-T_B", "GLIP-T_C.yaml", "glip_tiny_model_o365.pth", "GLIP-T", "O365",
                      published=_pub(44.9, 53.8, 17.8, None, 13.5, 33.2)),
        ModelZooEntry("GLIP-T_C", "GLIP-T_C.yaml", "glip_tiny_model_o365_goldg.pth", "GLIP-T", "O365, GoldG",
                      published=_pub(46.7, 55.1, 24.9, 14.3, 17.7, 44.4)),
        ModelZooEntry("GLIP-T", "GLIP-T.yaml", "glip_tiny_model_o365_goldg_cc_sbu.pth", "GLIP-T",
                      "O365, GoldG, CC3M, SBU", published=_pub(46.6, 55.2, None, 17.6, 20.1, 42.7),
                      notes="paper Table 3 has no LVIS row for this exact data mix"),
        ModelZooEntry("GLIP-L", "GLIP-L.yaml", "glip_large_model.pth", "GLIP-L", "FourODs, GoldG, CC3M+12M, SBU",
                      published=_pub(51.4, 61.7, 37.3, 29.3, 30.1, 51.2),
                      notes="COCO fine-tuned 61.7 is multi-scale test; paper zero-shot (Cap24M) 49.8"),
    ]
}


def list_models() -> List[str]:
    return list(MODEL_ZOO)


def get_entry(name: str) -> ModelZooEntry:
    """Entry by name (``GLIP-T_C`` or ``glip_d2://GLIP-T_C``); unknown names list the known ones."""
    if name.startswith(ZOO_PREFIX):
        name = name[len(ZOO_PREFIX):]
    try:
        return MODEL_ZOO[name]
    except KeyError:
        raise KeyError(f"No model named {name!r} in the glip_d2 model zoo; known: {', '.join(MODEL_ZOO)}") from None


def register(entry: ModelZooEntry, overwrite: bool = False) -> None:
    """Add an entry (your own fine-tuned model on the hub); refuses to replace one unless ``overwrite``."""
    if entry.name in MODEL_ZOO and not overwrite:
        raise ValueError(f"Model-zoo name {entry.name!r} is already registered")
    MODEL_ZOO[entry.name] = entry


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
    if trained:  # the checkpoint holds the whole text encoder: no separate HF download needed
        cfg.MODEL.LANGUAGE.PRETRAINED = False
    return cfg


def get(name: str, device: Optional[str] = None, trained: bool = True) -> torch.nn.Module:
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
