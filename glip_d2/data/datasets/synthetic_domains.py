"""Small synthetic "downstream domains" for transfer experiments that run offline, in minutes.

The GLIP paper measures transfer on ODinW: many small detection datasets whose vocabularies and image styles differ
from pre-training. These domains play that role for a model pre-trained on the synthetic grounding set
(:mod:`.synthetic`: 6 colours x 6 shapes named "colour shape"), each shifting one thing:

* ``renamed``: the same coloured shapes, named by new words ("tomato" = red circle, "window" = blue square, ...):
  the pictures are known, the vocabulary is not;
* ``outlines``: six of the pre-training categories under their own names, drawn as outlines on dark backgrounds:
  the vocabulary is known, the style is not;
* ``new_shapes``: five shapes never seen in pre-training (pentagon, arrow, moon, heart, kite) in any colour.

Each is a plain COCO-format detection json (no captions: prompts are built from the category names, as for ODinW)
registered as ``synthetic_{domain}_{train,val,test}`` through :func:`register_coco_grounding`, the path a user's
own data takes. Images depend only on (seed, domain, split, index) and are generated on first use.
"""
import json
import os
import shutil
from dataclasses import dataclass

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from .coco_grounding import register_coco_grounding
from .generated_data import write_jpeg
from .synthetic import (
    _RADIUS_RANGE,
    _SIZE_RANGE,
    _UNIT_POLYGONS,
    COLORS,
    _background,
    _place,
    _polygon_area,
)

__all__ = [
    "DOMAINS", "SyntheticDomain", "domain_dataset_names", "generate_domain", "register_synthetic_domain",
    "register_synthetic_domains_from_cfg",
]

_SPLITS = {"train": 0, "val": 1, "test": 2}
_MAX_OBJECTS = 4
DOMAIN_GENERATOR_VERSION = 1


def _regular(count: int, offset: float = 0.0) -> np.ndarray:
    angles = offset + np.arange(count) * 2 * np.pi / count
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _moon() -> np.ndarray:
    """A crescent: the outer circle's arc, back along an inner circle shifted to the right."""
    outer = np.linspace(np.radians(51), np.radians(309), 24)
    inner = np.linspace(np.radians(283), np.radians(77), 20)  # the circles meet at +-51 deg (outer), +-77 deg (inner)
    return np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                           np.stack([0.45 + 0.8 * np.cos(inner), 0.8 * np.sin(inner)], 1)])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, -y], 1)
    return pts / np.abs(pts).max()


_NEW_POLYGONS = {
    "pentagon": _regular(5, -np.pi / 2),
    "arrow": np.array([(1, 0), (0.1, 0.75), (0.1, 0.3), (-1, 0.3), (-1, -0.3), (0.1, -0.3), (0.1, -0.75)], float),
    "moon": _moon(),
    "heart": _heart(),
    "kite": np.array([(0, -1), (0.55, -0.2), (0, 1), (-0.55, -0.2)], float),
}


@dataclass(frozen=True)
class SyntheticDomain:
    """Categories as (name, shape, colour or None for any colour), and the drawing style."""

    name: str
    categories: tuple[tuple[str, str, str | None], ...]
    outline: bool = False
    dark: bool = False

    @property
    def thing_classes(self) -> list[str]:
        return [c[0] for c in self.categories]


DOMAINS = {
    "renamed": SyntheticDomain("renamed", (
        ("tomato", "circle", "red"), ("lemon", "circle", "yellow"), ("pine tree", "triangle", "green"),
        ("window", "square", "blue"), ("starfish", "star", "orange"), ("plus sign", "cross", "purple"),
    )),
    "outlines": SyntheticDomain("outlines", (
        ("red circle", "circle", "red"), ("blue square", "square", "blue"), ("green triangle", "triangle", "green"),
        ("yellow star", "star", "yellow"), ("purple hexagon", "hexagon", "purple"), ("orange cross", "cross", "orange"),
    ), outline=True, dark=True),
    "new_shapes": SyntheticDomain("new_shapes", tuple((s, s, None) for s in _NEW_POLYGONS)),
}


def _polygon_of(shape: str) -> np.ndarray:
    return _NEW_POLYGONS[shape] if shape in _NEW_POLYGONS else _UNIT_POLYGONS[shape]


def _render(domain: SyntheticDomain, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    width, height = (int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, size=2))
    img = _background(rng, height, width)
    if domain.dark:
        img = (img.astype(np.float32) * 0.35).astype(np.uint8)
    short, placed = min(width, height), []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        cat = int(rng.integers(len(domain.categories)))
        _, shape, color = domain.categories[cat]
        color = color or list(COLORS)[int(rng.integers(len(COLORS)))]
        radius = rng.uniform(*_RADIUS_RANGE) * short
        found = _place(rng, _polygon_of(shape), radius, width, height, placed)
        if found is None:
            continue
        polygon, box, centre = found
        bgr = [int(c) for c in np.clip(np.array(COLORS[color]) + rng.integers(-15, 16, size=3), 0, 255)[::-1]]
        pts = np.round(polygon * 16).astype(np.int32).reshape(-1, 1, 2)
        if domain.outline:
            thickness = max(2, int(round(radius * 0.18)))
            cv2.polylines(img, [pts], True, bgr, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(img, [pts], color=bgr, lineType=cv2.LINE_AA, shift=4)
        placed.append({"category_id": cat + 1, "polygon": polygon, "box": box, "centre": centre, "radius": radius})
    return img, placed


def _write_split(domain: SyntheticDomain, root: str, split: str, count: int, seed: int) -> None:
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    domain_code = sorted(DOMAINS).index(domain.name)
    for i in range(count):
        img, objects = _render(domain, np.random.default_rng([seed, 100 + domain_code, _SPLITS[split], i]))
        images.append(write_jpeg(image_dir, i + 1, img))
        for obj in objects:
            x1, y1, x2, y2 = (float(v) for v in obj["box"])
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": obj["category_id"],
                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "area": round(_polygon_area(obj["polygon"]), 2),
                "iscrowd": 0, "segmentation": [obj["polygon"].reshape(-1).tolist()],
            })
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(domain.thing_classes)]}
    with open(os.path.join(root, "annotations", f"{split}.json"), "w") as f:
        json.dump(coco, f, separators=(",", ":"))


def generate_domain(domain: str, root: str, counts: dict[str, int], seed: int = 0) -> dict:
    """(Re)generate one domain under ``root`` unless its manifest already matches; returns the manifest."""
    if domain not in DOMAINS:
        raise KeyError(f"unknown synthetic domain {domain!r}; known: {sorted(DOMAINS)}")
    manifest = {"version": DOMAIN_GENERATOR_VERSION, "domain": domain, "seed": int(seed),
                "counts": {s: int(counts.get(s, 0)) for s in _SPLITS}}
    manifest_file = os.path.join(root, "manifest.json")
    try:
        with open(manifest_file) as f:
            if json.load(f) == manifest:
                return manifest
    except (OSError, ValueError):
        pass
    for folder in ("images", "annotations"):
        shutil.rmtree(os.path.join(root, folder), ignore_errors=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, count in manifest["counts"].items():
        _write_split(DOMAINS[domain], root, split, count, int(seed))
    with open(manifest_file + ".tmp", "w") as f:
        json.dump(manifest, f)
    os.replace(manifest_file + ".tmp", manifest_file)  # written last: an interrupted run regenerates
    return manifest


def domain_dataset_names(domain: str) -> dict[str, str]:
    return {split: f"synthetic_{domain}_{split}" for split in _SPLITS}


def register_synthetic_domain(
    domain: str, root: str = "datasets/synthetic_domains", num_train: int = 60, num_val: int = 30,
    num_test: int = 30, seed: int = 0,
) -> list[str]:
    """Generate (first use) and register ``synthetic_{domain}_{train,val,test}`` under ``root/domain``."""
    folder = os.path.join(root, domain)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    if comm.is_main_process():
        generate_domain(domain, folder, counts, seed)
    comm.synchronize()
    names = []
    for split, name in domain_dataset_names(domain).items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        register_coco_grounding(name, os.path.join(folder, "annotations", f"{split}.json"),
                                os.path.join(folder, "images", split), thing_classes=DOMAINS[domain].thing_classes)
        names.append(name)
    return names


def register_synthetic_domains_from_cfg(cfg) -> list[str]:
    """Register the domains DATASETS.TRAIN/TEST name (``synthetic_{domain}_{split}``), generated under
    ``DATASETS.SYNTHETIC.ROOT + "_domains"`` with DATASETS.SYNTHETIC.SEED; nothing when none is named."""
    used = {n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)}
    names = []
    for domain in DOMAINS:
        if used & set(domain_dataset_names(domain).values()):
            names += register_synthetic_domain(
                domain, cfg.DATASETS.SYNTHETIC.ROOT.rstrip("/") + "_domains", seed=int(cfg.DATASETS.SYNTHETIC.SEED)
            )
    return names
