"""Dataset registration: synthetic grounding data, detection jsons as grounding data, LVIS, MDETR-style grounding.

Importing this package registers the builtin names with default paths under ``$DETECTRON2_DATASETS``
(default ``./datasets``), as detectron2 does, without touching the disk; data is read on
``DatasetCatalog.get``. The synthetic datasets are registered (and generated) by :func:`register_synthetic`;
the ODinW sets by :func:`register_odinw_benchmark`, or when a config's DATASETS.TRAIN/TEST name them.
"""
import os

from .captions import (
    COCO_KARPATHY_BUILTIN,
    KARPATHY_SPLITS,
    load_coco_captions_json,
    load_karpathy_json,
    register_caption_builtins_from_cfg,
    register_coco_captions,
    register_karpathy_captions,
)
from .coco_grounding import (
    COCO_GROUNDING_BUILTIN,
    register_all_coco_grounding,
    register_coco_grounding,
    register_odinw,
)
from .lvis import (
    LVIS_BUILTIN,
    load_lvis_grounding_json,
    register_all_lvis_grounding,
    register_lvis_grounding,
)
from .mdetr import (
    MDETR_BUILTIN,
    load_grounding_json,
    register_all_mdetr,
    register_mdetr_grounding,
)
from .odinw import (
    ODINW_13,
    ODINW_35,
    odinw_config_overrides,
    odinw_info,
    register_odinw_benchmark,
    register_odinw_from_cfg,
    unsupported_overrides,
)
from .synthetic import CATEGORY_NAMES as SYNTHETIC_CATEGORY_NAMES
from .synthetic import (
    SYNTHETIC_DATASETS,
    generate_synthetic_dataset,
    register_synthetic,
    register_synthetic_from_cfg,
)
from .synthetic_captions import (
    SYNTHETIC_CAPTION_DATASETS,
    generate_synthetic_captions,
    register_synthetic_captions,
    register_synthetic_captions_from_cfg,
)
from .synthetic_domains import DOMAINS as SYNTHETIC_DOMAINS
from .synthetic_domains import register_synthetic_domain, register_synthetic_domains_from_cfg
from .synthetic_vqa import SYNTHETIC_VQA_DATASETS, register_synthetic_vqa, register_synthetic_vqa_from_cfg
from .vqa import VQA_V2_BUILTIN, build_answer_vocab, load_vqa_json, register_vqa, register_vqa_from_cfg

__all__ = [
    "COCO_KARPATHY_BUILTIN",
    "COCO_GROUNDING_BUILTIN",
    "LVIS_BUILTIN",
    "MDETR_BUILTIN",
    "ODINW_13",
    "ODINW_35",
    "SYNTHETIC_CATEGORY_NAMES",
    "SYNTHETIC_DATASETS",
    "SYNTHETIC_DOMAINS",
    "generate_synthetic_dataset",
    "load_grounding_json",
    "load_lvis_grounding_json",
    "odinw_config_overrides",
    "odinw_info",
    "register_coco_grounding",
    "register_lvis_grounding",
    "register_mdetr_grounding",
    "register_odinw",
    "register_odinw_benchmark",
    "register_odinw_from_cfg",
    "register_synthetic",
    "register_synthetic_from_cfg",
    "register_synthetic_domain",
    "register_synthetic_domains_from_cfg",
    "unsupported_overrides",
    "register_datasets_from_cfg",
    "SYNTHETIC_VQA_DATASETS",
    "VQA_V2_BUILTIN",
    "build_answer_vocab",
    "load_vqa_json",
    "register_synthetic_vqa",
    "register_synthetic_vqa_from_cfg",
    "register_vqa",
    "register_vqa_from_cfg",
    "KARPATHY_SPLITS",
    "SYNTHETIC_CAPTION_DATASETS",
    "generate_synthetic_captions",
    "load_coco_captions_json",
    "load_karpathy_json",
    "register_caption_builtins_from_cfg",
    "register_coco_captions",
    "register_karpathy_captions",
    "register_synthetic_captions",
    "register_synthetic_captions_from_cfg",
]


def register_datasets_from_cfg(cfg) -> list:
    """Register what a config asks for before its data loaders are built (called by the trainer).

    The synthetic sets (grounding, VQA and captions), the builtin VQA v2 splits and COCO Karpathy caption splits
    when DATASETS.TRAIN/TEST name them (synthetic data generated on first use), and every
    ``(name, json_file, image_root)`` of DATASETS.REGISTER_COCO as COCO-format grounding data, so that one command
    evaluates a user's own json; every ``(name, shards_dir, image_root)`` of DATASETS.REGISTER_PSEUDO as pseudo-label
    grounding data; then the ODinW names (``odinw_Aquarium_val``, ...) nobody registered yet.
    Returns the names registered.
    """
    from detectron2.data import DatasetCatalog

    names = list(register_synthetic_from_cfg(cfg))
    names += register_synthetic_domains_from_cfg(cfg)  # transfer domains, when named
    names += register_synthetic_vqa_from_cfg(cfg) + register_vqa_from_cfg(cfg)  # VQA sets: only those used
    names += register_synthetic_captions_from_cfg(cfg) + register_caption_builtins_from_cfg(cfg)  # captioning sets: only those used
    for name, json_file, image_root in _user_entries(cfg.DATASETS.REGISTER_COCO, "REGISTER_COCO", "json_file",
                                                    os.path.isfile):
        if name not in DatasetCatalog.list():
            register_coco_grounding(name, json_file, image_root)
        names.append(name)
    names += _register_pseudo_from_cfg(cfg)
    names += register_odinw_from_cfg(cfg)
    return names


def _user_entries(entries, key: str, what: str, exists):
    """The ``(name, path, image_root)`` entries of ``DATASETS.<key>``, each checked: three parts, an existing path."""
    for entry in entries:
        if len(entry) != 3:
            raise ValueError(f"DATASETS.{key} entries are (name, {what}, image_root); got {entry!r}")
        name, path, image_root = entry
        if not exists(path):
            raise FileNotFoundError(f"DATASETS.{key}: {what} of '{name}' not found: {path}")
        yield name, path, image_root


def _register_pseudo_from_cfg(cfg) -> list:
    """DATASETS.REGISTER_PSEUDO: pseudo-label shard folders (self-training) as training sets a config can name."""
    if not cfg.DATASETS.REGISTER_PSEUDO:
        return []  # nothing to import: glip_d2.self_training pulls in the teacher's modules
    from detectron2.data import DatasetCatalog

    from ...self_training.shards import list_shards, register_pseudo_grounding  # lazily: self_training imports data

    names = []
    for name, shards_dir, image_root in _user_entries(cfg.DATASETS.REGISTER_PSEUDO, "REGISTER_PSEUDO", "shards_dir",
                                                     os.path.isdir):
        if not list_shards(shards_dir):
            raise FileNotFoundError(
                f"DATASETS.REGISTER_PSEUDO: shard folder of '{name}' holds no shards (shard_NNNNNN.json): {shards_dir}"
            )
        if name not in DatasetCatalog.list():
            register_pseudo_grounding(name, shards_dir, image_root or None)
        names.append(name)
    return names


def _register_builtin() -> None:
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    register_all_coco_grounding(root)
    register_all_lvis_grounding(root)
    register_all_mdetr(root)


_register_builtin()
