"""The catalog of downloadable GLIP models: name -> config file, official weights on the Hugging Face hub, published
numbers. Plain data read by both the checkpoint code (``glip_d2://NAME`` URLs) and ``glip_d2.model_zoo``.

Published numbers are the README values of the released checkpoints and the GLIP paper's. Sizes and sha256 of the
hub files are not recorded yet (they could not be read offline): they are None, and the check runs as soon as a
value is filled in (``ModelZooEntry.size_bytes`` / ``sha256``).
"""
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["HF_REPO", "MODEL_ZOO", "ModelZooEntry", "ZOO_PREFIX", "get_entry", "list_models", "register"]

#: URL scheme of model-zoo weights: ``MODEL.WEIGHTS glip_d2://GLIP-T_C``.
ZOO_PREFIX = "glip_d2://"

HF_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class ModelZooEntry:
    """One downloadable model: where its config and weights are and what it should score."""

    name: str
    config_file: str  # relative to configs/ (or absolute)
    hf_filename: str
    architecture: str  # glip_d2.checkpoint.KNOWN_ARCHITECTURES name
    pretrain_data: str
    hf_repo: str = HF_REPO
    revision: str | None = None  # pinned hub commit; None = main
    size_bytes: int | None = None  # checked when known
    sha256: str | None = None  # checked when known
    # Published box AP / recall, keys: coco_zero_shot, coco_finetuned, lvis_minival_ap (paper Table 3),
    # lvis_minival_apr_last / lvis_minival_apr_best (README), odinw13_zero_shot.
    published: Mapping[str, float | None] = field(default_factory=dict)
    notes: str = ""


def _pub(coco_zs, coco_ft, lvis_ap, apr_last, apr_best, odinw):
    return {
        "coco_zero_shot": coco_zs, "coco_finetuned": coco_ft, "lvis_minival_ap": lvis_ap,
        "lvis_minival_apr_last": apr_last, "lvis_minival_apr_best": apr_best, "odinw13_zero_shot": odinw,
    }


MODEL_ZOO: dict[str, ModelZooEntry] = {
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


def list_models() -> list[str]:
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
