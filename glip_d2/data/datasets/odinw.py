"""ODinW ("Object Detection in the Wild"), GLIP's transfer benchmark: 35 COCO-format datasets registered by name.

GLIP describes each ODinW dataset by a config: its split files, the category names the prompt uses
(``OVERRIDE_CATEGORY``, which may differ from the json's) and a few training settings. ``odinw_catalog.json`` holds
those facts for the 35 datasets of GLIP's ``configs/odinw_35``, in that benchmark's order. The 13 datasets of GLIP's
paper have their own configs (``configs/odinw_13``) that differ in a few category names and caption prompts; each
ODinW-13 entry keeps those differences under ``"odinw_13"``.

Registered names say which config set they follow, so both can live in one process: ``odinw_{name}_{split}``
(ODinW-35 configs) and ``odinw13_{name}_{split}`` (ODinW-13 configs, the names GLIP's paper prompted with).
Registration reads nothing from disk; a missing download surfaces when the dataset is used.
"""
import ast
import copy
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_grounding import register_coco_grounding

__all__ = [
    "ODINW_13",
    "ODINW_35",
    "odinw_config_overrides",
    "odinw_info",
    "register_odinw_benchmark",
    "register_odinw_from_cfg",
    "unsupported_overrides",
]

#: The 35 datasets in the order of GLIP's ODinW-35 config list (tests check it against the catalog).
ODINW_35 = (
    "AerialMaritimeDrone_large", "AerialMaritimeDrone_tiled", "AmericanSignLanguageLetters", "Aquarium", "BCCD",
    "ChessPieces", "CottontailRabbits", "DroneControl", "EgoHands_generic", "EgoHands_specific", "HardHatWorkers_raw",
    "MaskWearing_raw", "MountainDewCommercial", "NorthAmericaMushrooms", "OxfordPets_by-breed",
    "OxfordPets_by-species", "PKLot_640", "Packages_Raw", "PascalVOC", "Raccoon", "ShellfishOpenImages_raw",
    "ThermalCheetah", "UnoCards_raw", "VehiclesOpenImages_416x416", "WildfireSmoke", "boggleBoards_416x416AutoOrient",
    "brackishUnderwater_960x540", "dice_mediumColor", "openPoetryVision_512x512", "pistols", "plantdoc_416x416",
    "pothole", "selfdrivingCar_fixedLarge", "thermalDogsAndPeople", "websiteScreenshots",
)
#: The 13 datasets of GLIP's paper, in the same order.
ODINW_13 = (
    "AerialMaritimeDrone_large", "Aquarium", "CottontailRabbits", "EgoHands_generic", "NorthAmericaMushrooms",
    "Packages_Raw", "PascalVOC", "Raccoon", "ShellfishOpenImages_raw", "VehiclesOpenImages_416x416", "pistols",
    "pothole", "thermalDogsAndPeople",
)

#: Config set -> prefix of its registered names.
_PREFIX = {"odinw_35": "odinw", "odinw_13": "odinw13"}


def _same(value, name: str, configs: str):
    return value


def _split_names(value: str, name: str, configs: str) -> tuple:
    """GLIP's ``("val",)`` -> the registered names of those splits."""
    return tuple(_dataset_name(name, split, configs) for split in ast.literal_eval(value))


#: GLIP config keys glip_d2 has under the same name -> converter of GLIP's value. Every other key of the catalog
#: is unsupported (listed with the reason in the catalog's "unsupported_keys").
_SUPPORTED = {
    "DATALOADER.ASPECT_RATIO_GROUPING": _same,
    "DATASETS.GENERAL_COPY": _same,
    "DATASETS.TRAIN": _split_names,
    "DATASETS.TEST": _split_names,
    "INPUT.MIN_SIZE_TRAIN": lambda value, name, configs: (value,),  # detectron2 takes the sizes to sample from
    "INPUT.MAX_SIZE_TRAIN": _same,
    "INPUT.MIN_SIZE_TEST": _same,
    "INPUT.MAX_SIZE_TEST": _same,
    "SOLVER.CHECKPOINT_PERIOD": _same,
    "SOLVER.MAX_EPOCH": _same,
    "SOLVER.WARMUP_ITERS": _same,
}


@functools.lru_cache(maxsize=1)
def _catalog() -> dict:
    """The catalog file, read once on first use (never at import)."""
    with open(Path(__file__).with_name("odinw_catalog.json"), encoding="utf-8") as f:
        catalog = json.load(f)
    catalog["by_name"] = {entry["name"]: entry for entry in catalog["datasets"]}
    return catalog


def _names(configs: str) -> tuple:
    if configs not in _PREFIX:
        raise ValueError(f"unknown ODinW config set {configs!r}; expected one of {sorted(_PREFIX)}")
    return ODINW_13 if configs == "odinw_13" else ODINW_35


def odinw_info(name: str, configs: str = "odinw_35") -> dict:
    """One dataset as GLIP's ``configs`` set ("odinw_35" or "odinw_13") describes it; a copy, safe to modify.

    Keys: ``name``, ``config`` (GLIP's config file stem), ``configs``, ``in_odinw_13``, ``eval_split`` (the split
    GLIP evaluates on: "val", or "minival" for the larger sets), ``categories`` (``{"id", "name"}`` in id order),
    ``overrides`` (GLIP's config keys and values, yacs syntax) and ``splits`` (split -> ``json_file``,
    ``image_root``, relative to the datasets root).
    """
    names = _names(configs)
    if name not in names:
        raise KeyError(f"unknown {configs.replace('_', '-').upper()} dataset {name!r}; valid names: "
                       f"{', '.join(names)}")
    entry = copy.deepcopy(_catalog()["by_name"][name])
    odinw_13 = entry.pop("odinw_13")
    if configs == "odinw_13":
        entry.update(odinw_13)
    entry.update(configs=configs, in_odinw_13=odinw_13 is not None)
    return entry


def _dataset_name(name: str, split: str, configs: str) -> str:
    return f"{_PREFIX[configs]}_{name}_{split}"


def _default_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_odinw_benchmark(
    names: str | Sequence[str] = "odinw_13",
    root: str | None = None,
    splits: Sequence[str] | None = None,
    configs: str = "odinw_35",
) -> list[str]:
    """Register ODinW datasets as ``odinw_{name}_{split}`` (``odinw13_...`` for ``configs="odinw_13"``).

    Nothing is read now: the catalog knows every split's files and category ids, so each dataset's metadata
    (``thing_classes`` = GLIP's prompt names) is complete before its json is opened by ``DatasetCatalog.get``.
    Registering a name again with the same files is a no-op, so callers need not track what is registered.

    Args:
        names: "odinw_13", "odinw_35", one dataset name or a list of them (:data:`ODINW_35`).
        root: the folder holding GLIP's ``odinw/`` download; default ``$DETECTRON2_DATASETS`` or ``datasets``.
        splits: catalog split keys, e.g. "train", "val", "test", "minival" or the few-shot "train_{K}_{seed}",
            "val_{K}_{seed}"; default: train, val, test and the split GLIP evaluates on (minival for some sets).
        configs: which GLIP config set names the categories: "odinw_35" (the full benchmark's) or "odinw_13"
            (the ones GLIP's paper used; a few names differ).

    Returns:
        The registered dataset names, in dataset then split order.
    """
    if names in ("odinw_13", "odinw_35"):
        names = _names(names)
    elif isinstance(names, str):
        names = [names]
    root = _default_root() if root is None else root
    plan = []  # checked in full first, so a bad name or split registers nothing
    for name in names:
        info = odinw_info(name, configs)
        for split in splits if splits is not None else _default_splits(info):
            if split not in info["splits"]:
                raise ValueError(f"ODinW dataset {name!r} has no split {split!r}; it has {sorted(info['splits'])}")
            plan.append((info, split))
    return [_register_one(info, split, root) for info, split in plan]


def _default_splits(info: dict) -> list[str]:
    return list(dict.fromkeys(["train", "val", "test", info["eval_split"]]))


def _register_one(info: dict, split: str, root: str) -> str:
    dataset_name = _dataset_name(info["name"], split, info["configs"])
    json_file = os.path.join(root, info["splits"][split]["json_file"])
    image_root = os.path.join(root, info["splits"][split]["image_root"])
    # GLIP blanks the name of a category it never wants predicted (ChessPieces id 1): a blank name has no tokens,
    # so GLIP cannot score it. Leaving it out of thing_classes does the same; glip_d2 rejects blank prompt names.
    categories = [c for c in info["categories"] if c["name"].strip()]
    thing_classes = [c["name"] for c in categories]
    if dataset_name in DatasetCatalog.list():
        meta = MetadataCatalog.get(dataset_name)
        existing = (meta.get("json_file"), meta.get("image_root"), meta.get("thing_classes"))
        if existing == (json_file, image_root, thing_classes):
            return dataset_name
        raise ValueError(f"{dataset_name} is already registered with other files or categories "
                         f"(json_file {existing[0]}); DatasetCatalog.remove and MetadataCatalog.remove it first")
    register_coco_grounding(dataset_name, json_file, image_root, thing_classes=thing_classes,
                            category_ids=[c["id"] for c in categories],
                            metadata={"odinw_config": info["config"]})
    return dataset_name


def _parse_dataset_name(dataset_name: str) -> tuple | None:
    """``odinw13_Aquarium_val`` -> ("Aquarium", "val", "odinw_13"); None for names that are not ODinW's."""
    for configs, prefix in _PREFIX.items():
        for name in _names(configs):
            head = f"{prefix}_{name}_"
            if dataset_name.startswith(head) and dataset_name[len(head):] in _catalog()["by_name"][name]["splits"]:
                return name, dataset_name[len(head):], configs
    return None


def register_odinw_from_cfg(cfg) -> list[str]:
    """Register the ODinW names that DATASETS.TRAIN/TEST ask for and nobody registered yet (under
    ``$DETECTRON2_DATASETS``), so ``train_net.py ... DATASETS.TEST '("odinw_Aquarium_val",)'`` needs no code."""
    registered = []
    for dataset_name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if dataset_name in DatasetCatalog.list():
            continue
        parsed = _parse_dataset_name(dataset_name)
        if parsed is not None:
            name, split, configs = parsed
            registered += register_odinw_benchmark([name], splits=[split], configs=configs)
    return registered


def odinw_config_overrides(name: str, configs: str = "odinw_35") -> list:
    """GLIP's per-dataset settings as a flat ``[key, value, ...]`` list for ``cfg.merge_from_list``.

    Only keys glip_d2 has (see :func:`unsupported_overrides` for the rest). DATASETS.TRAIN/TEST become the
    registered names of GLIP's train and evaluation splits; SOLVER.MAX_EPOCH and DATASETS.GENERAL_COPY need a
    glip_d2 config that defines them.
    """
    flat = []
    for key, value in odinw_info(name, configs)["overrides"].items():
        if key in _SUPPORTED:
            flat += [key, _SUPPORTED[key](value, name, configs)]
    return flat


def unsupported_overrides(name: str, configs: str = "odinw_35") -> dict:
    """GLIP's per-dataset settings glip_d2 has no key for (key -> value), so they are not dropped unseen.

    Why each is unsupported is in the catalog's ``unsupported_keys``.
    """
    return {k: v for k, v in odinw_info(name, configs)["overrides"].items() if k not in _SUPPORTED}
