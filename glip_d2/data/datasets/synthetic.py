"""Deterministic synthetic grounding data: coloured shapes on textured backgrounds, with captions.

Why: tests, CI and quick training schedules need a grounding dataset that downloads nothing, is generated in
seconds and is exactly reproducible. Each image (sides 160-320 px) has a noise, gradient or stripe background
and 1-5 shapes (6 kinds x 6 colours = 36 categories such as ``"red circle"``), sometimes overlapping. Every
object is a polygon: it is drawn from that polygon, its COCO ``segmentation`` is that polygon (amodal: parts
hidden by a later shape stay in the mask) and its box is the polygon's extent, so masks lie inside boxes and
boxes inside the image.

Two captions per image, written to two COCO jsons that share the images:

* ``list``: the names of the categories present joined by ". " in random order, as GLIP's detection prompts
  (``"blue square. red circle"``); each object's span is its category name.
* ``text``: a sentence such as ``"a small red circle left of a blue square and an orange star"``; each object's
  span is its own phrase (size word, if any, + category name; the article is outside the span).

Both carry what the grounding evaluators read: ``tokens_positive_eval`` (one entry per phrase in caption
order), per-annotation ``phrase_ids`` (index into it), ``sentence_id`` and ``original_img_id``.

Image ``i`` of a split depends only on (seed, split, i). :func:`register_synthetic` generates the data on first
use (again when its parameters change; a small manifest records them) and registers ``synthetic_train``,
``synthetic_val`` (list captions) and ``synthetic_train_text``, ``synthetic_val_text`` (free text).
"""
import json
import logging
import os
import shutil
from collections.abc import Sequence

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from .generated_data import write_jpeg
from .mdetr import load_grounding_json

__all__ = [
    "CATEGORY_NAMES",
    "COLORS",
    "SHAPES",
    "SYNTHETIC_DATASETS",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "list_caption",
    "register_synthetic",
    "register_synthetic_from_cfg",
    "render_sample",
    "text_caption",
]

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
#: RGB colours, far apart so each name is visually unambiguous.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 25),
}
#: Category names in json id order (id = index + 1).
CATEGORY_NAMES = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
#: name -> (split, caption style).
SYNTHETIC_DATASETS = {
    "synthetic_train": ("train", "list"),
    "synthetic_val": ("val", "list"),
    "synthetic_train_text": ("train", "text"),
    "synthetic_val_text": ("val", "text"),
    "synthetic_test": ("test", "list"),
    "synthetic_test_text": ("test", "text"),
}

#: Bump when the rendered images or the json layout change, so old folders get regenerated.
GENERATOR_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # test: held out, never used to tune a recipe
_SIZE_RANGE = (160, 320)  # image sides, inclusive
_MAX_OBJECTS = 5
_RADIUS_RANGE = (0.08, 0.2)  # object radius / shorter image side
_SMALL, _LARGE = 0.11, 0.165  # radius fractions below/above which the text caption says "small"/"large"
_MAX_IOU, _MAX_COVER = 0.35, 0.5  # overlap allowed: box IoU, and intersection over the smaller box
_NEAR_PROB = 0.35  # chance to place an object next to an existing one (creates overlaps)
_TEXT_STARTS = ("", "there is ", "the image shows ", "we can see ")


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices [N, 2] of a shape of radius 1 centred at the origin."""
    if shape == "cross":
        a = 0.35
        return np.array(
            [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a),
             (-a, 1)], dtype=np.float64)
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    else:
        count, offset = {"circle": (40, 0.0), "square": (4, np.pi / 4), "triangle": (3, -np.pi / 2),
                         "hexagon": (6, 0.0)}[shape]
        angles = offset + np.arange(count) * 2 * np.pi / count
        radius = np.ones(count)
    return np.stack([np.cos(angles) * radius, np.sin(angles) * radius], axis=1)


_UNIT_POLYGONS = {shape: _unit_polygon(shape) for shape in SHAPES}


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(70, 185)
    return np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-saturation textured background (noise, gradient or stripes), uint8 [H, W, 3]."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    proj = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
    c0, c1 = _muted_color(rng).astype(np.float32), _muted_color(rng).astype(np.float32)
    if kind == 0:  # blurred noise
        img = c0 + rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(rng.uniform(10, 30))
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 2.0)))
    elif kind == 1:  # linear gradient between two colours
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    else:  # stripes
        period = np.float32(rng.uniform(8, 32))
        img = np.where(((proj / period) % 1.0 < 0.5)[..., None], c0, c1)
    img = img + rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(4.0)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _box_ok(box: np.ndarray, others: Sequence[np.ndarray]) -> bool:
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in others:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        other_area = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (area + other_area - inter) > _MAX_IOU or inter / min(area, other_area) > _MAX_COVER:
            return False
    return True


def _place(rng, unit_polygon, radius, width, height, placed) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rotate, scale and position a unit polygon fully inside the image; returns (polygon, box xyxy, centre) or
    None."""
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rel = unit_polygon @ rot.T * radius
    lo = np.array([1.0, 1.0]) - rel.min(axis=0)
    hi = np.array([width - 1.0, height - 1.0]) - rel.max(axis=0)
    for _ in range(30):
        if placed and rng.random() < _NEAR_PROB:
            anchor = placed[rng.integers(len(placed))]
            angle = rng.uniform(0, 2 * np.pi)
            dist = (radius + anchor["radius"]) * rng.uniform(0.5, 0.9)
            centre = np.clip(anchor["centre"] + dist * np.array([np.cos(angle), np.sin(angle)]), lo, hi)
        else:
            centre = rng.uniform(lo, hi)
        polygon = np.round(rel + centre, 2)
        box = np.concatenate([polygon.min(axis=0), polygon.max(axis=0)])
        if _box_ok(box, [p["box"] for p in placed]):
            return polygon, box, centre
    return None


def render_sample(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Render one image; returns (BGR uint8 image, objects in drawing order).

    Each object: ``category_id`` (1-based), ``name``, ``size`` ("small"/"large"/""), ``polygon`` [N, 2]
    (pixel coordinates, 2 decimals), ``box`` [x1, y1, x2, y2] (the polygon's extent), ``centre``, ``radius``.
    """
    width, height = (int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, size=2))
    img = _background(rng, height, width)
    short = min(width, height)
    placed = []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        color_idx, shape_idx = int(rng.integers(len(COLORS))), int(rng.integers(len(SHAPES)))
        frac = rng.uniform(*_RADIUS_RANGE)
        found = _place(rng, _UNIT_POLYGONS[SHAPES[shape_idx]], frac * short, width, height, placed)
        if found is None:
            continue
        polygon, box, centre = found
        rgb = np.clip(np.array(list(COLORS.values())[color_idx]) + rng.integers(-15, 16, size=3), 0, 255)
        pts = np.round(polygon * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits (shift=4)
        # Anti-aliased edges (OpenCV anti-aliases 8-bit images only).
        cv2.fillPoly(img, [pts], color=[int(c) for c in rgb[::-1]], lineType=cv2.LINE_AA, shift=4)
        category_id = color_idx * len(SHAPES) + shape_idx + 1
        size = "small" if frac < _SMALL else ("large" if frac > _LARGE else "")
        placed.append({"category_id": category_id, "name": CATEGORY_NAMES[category_id - 1], "size": size,
                       "polygon": polygon, "box": box, "centre": centre, "radius": frac * short})
    return img, placed


def list_caption(objects: Sequence[dict], rng: np.random.Generator) -> tuple[str, list[list[int]], list[int]]:
    """Detection-style caption: names present, ". "-joined, random order.

    Returns (caption, one [start, end] span per distinct name in caption order, phrase index of each object).
    """
    distinct = list(dict.fromkeys(o["category_id"] for o in objects))
    order = [distinct[i] for i in rng.permutation(len(distinct))]
    caption, spans = "", []
    for i, category_id in enumerate(order):
        caption += ". " if i else ""
        spans.append([len(caption), len(caption) + len(CATEGORY_NAMES[category_id - 1])])
        caption += CATEGORY_NAMES[category_id - 1]
    return caption, spans, [order.index(o["category_id"]) for o in objects]


def _relation(a: dict, b: dict) -> str:
    """Where ``a`` is relative to ``b`` (image y grows downwards)."""
    dx, dy = a["centre"] - b["centre"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def text_caption(objects: Sequence[dict], rng: np.random.Generator) -> tuple[str, list[list[int]], list[int]]:
    """Free-text caption naming every object once, objects paired by spatial relations.

    Returns (caption, one [start, end] span per object phrase in caption order, phrase index of each object).
    """
    order = [int(i) for i in rng.permutation(len(objects))]
    caption = _TEXT_STARTS[int(rng.integers(len(_TEXT_STARTS)))]
    spans, phrase_of = [], [0] * len(objects)

    def add_phrase(idx: int) -> None:
        nonlocal caption
        obj = objects[idx]
        phrase = f"{obj['size']} {obj['name']}" if obj["size"] else obj["name"]
        caption += ("an " if phrase[0] in "aeiou" else "a ")
        phrase_of[idx] = len(spans)
        spans.append([len(caption), len(caption) + len(phrase)])
        caption += phrase

    clauses = [order[i:i + 2] for i in range(0, len(order), 2)]
    for c, clause in enumerate(clauses):
        if c:
            caption += " and " if c == len(clauses) - 1 else ", "
        add_phrase(clause[0])
        if len(clause) == 2:
            caption += f" {_relation(objects[clause[0]], objects[clause[1]])} "
            add_phrase(clause[1])
    return caption, spans, phrase_of


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _coco_json(images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {"description": "glip_d2 synthetic grounding data", "version": GENERATOR_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": n.split(" ")[1]}
                       for i, n in enumerate(CATEGORY_NAMES)],
    }


def _generate_split(image_dir: str, split: str, num_images: int, seed: int) -> dict[str, dict]:
    """Render and write one split's images; return its two COCO dicts {"list": ..., "text": ...}."""
    os.makedirs(image_dir, exist_ok=True)
    out = {style: ([], []) for style in ("list", "text")}
    for i in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
        img, objects = render_sample(rng)
        image_id = i + 1
        entry = write_jpeg(image_dir, image_id, img)
        for style, make_caption in (("list", list_caption), ("text", text_caption)):
            caption, spans, phrase_of = make_caption(objects, rng)
            images, annotations = out[style]
            images.append({
                **entry, "caption": caption, "dataset_name": "synthetic", "sentence_id": 0,
                "original_img_id": image_id, "tokens_positive_eval": [[s] for s in spans],
            })
            for obj, phrase in zip(objects, phrase_of):
                x1, y1, x2, y2 = (float(v) for v in obj["box"])
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": obj["category_id"],
                    "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    "area": round(_polygon_area(obj["polygon"]), 2), "iscrowd": 0,
                    "segmentation": [obj["polygon"].reshape(-1).tolist()],
                    "tokens_positive": [spans[phrase]], "phrase_ids": phrase,
                })
    return {style: _coco_json(*out[style]) for style in out}


def _paths(root: str, split: str, style: str) -> tuple[str, str]:
    """(json_file, image_root) of one registered variant."""
    suffix = "" if style == "list" else "_text"
    return os.path.join(root, "annotations", f"{split}{suffix}.json"), os.path.join(root, "images", split)


def _manifest(num_train: int, num_val: int, seed: int, num_test: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "num_test": num_test,
            "seed": seed}


def generate_synthetic_dataset(
    root: str, num_train: int = 200, num_val: int = 50, seed: int = 0, num_test: int = 50
) -> dict:
    """(Re)generate the dataset under ``root``: ``images/{train,val,test}/``,
    ``annotations/{train,val,test}[_text].json`` and ``manifest.json`` (written last, so an interrupted run is
    regenerated). Returns the manifest. ``test`` is a held-out split for checking recipes tuned on ``val``."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    manifest_file = os.path.join(root, "manifest.json")
    if os.path.exists(manifest_file):
        os.remove(manifest_file)
    for folder in ("images", "annotations"):  # only what this generator writes
        shutil.rmtree(os.path.join(root, folder), ignore_errors=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, count in (("train", int(num_train)), ("val", int(num_val)), ("test", int(num_test))):
        coco = _generate_split(os.path.join(root, "images", split), split, count, int(seed))
        for style, data in coco.items():
            with open(_paths(root, split, style)[0], "w") as f:
                json.dump(data, f, separators=(",", ":"))
    manifest = _manifest(int(num_train), int(num_val), int(seed), int(num_test))
    with open(manifest_file + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(manifest_file + ".tmp", manifest_file)
    return manifest


def ensure_synthetic_dataset(
    root: str, num_train: int = 200, num_val: int = 50, seed: int = 0, num_test: int = 50
) -> bool:
    """Generate unless ``root`` already holds this exact dataset; returns True when it generated."""
    wanted = _manifest(num_train, num_val, seed, num_test)
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            current = json.load(f)
    except (OSError, ValueError):
        current = None
    complete = all(os.path.exists(_paths(root, split, style)[0]) and os.path.isdir(_paths(root, split, style)[1])
                   for split in _SPLIT_CODES for style in ("list", "text"))
    if current == wanted and complete:
        return False
    logger.info(f"Generating synthetic grounding data in {root} "
                f"({num_train} train, {num_val} val, {num_test} test, seed {seed})")
    generate_synthetic_dataset(root, num_train, num_val, seed, num_test)
    return True


def register_synthetic(
    root: str = "datasets/synthetic", num_train: int = 200, num_val: int = 50, seed: int = 0, style: str = "both",
    num_test: int = 50,
) -> list[str]:
    """Generate (first use / changed parameters) and register the synthetic datasets; returns their names.

    Example::

        register_synthetic("datasets/synthetic", num_train=200, num_val=50, seed=0)
        DatasetCatalog.get("synthetic_train")  # dicts with "caption" and per-annotation "tokens_positive"

    ``style``: ``"list"`` (``synthetic_train``/``_val``/``_test``), ``"text"`` (``synthetic_*_text``) or
    ``"both"``. Calling it again with the same arguments does nothing; with other arguments the data is
    regenerated and the names re-registered. In distributed runs only the main process writes.
    """
    if style not in ("list", "text", "both"):
        raise ValueError(f"style must be 'list', 'text' or 'both', got {style!r}")
    if comm.is_main_process():
        ensure_synthetic_dataset(root, num_train, num_val, seed, num_test)
    comm.synchronize()
    params = dict(root=os.path.abspath(root), **_manifest(num_train, num_val, seed, num_test))
    names = []
    for name, (split, name_style) in SYNTHETIC_DATASETS.items():
        if style not in ("both", name_style):
            continue
        if name in DatasetCatalog.list():
            previous = MetadataCatalog.get(name).get("synthetic_params")
            if previous == params:
                names.append(name)
                continue
            if previous is None:
                raise ValueError(f"dataset {name!r} is already registered by something other than "
                                 "register_synthetic; remove it first")
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        json_file, image_root = _paths(root, split, name_style)
        DatasetCatalog.register(name, lambda j=json_file, r=image_root, n=name: load_grounding_json(j, r, n))
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            thing_classes=list(CATEGORY_NAMES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CATEGORY_NAMES))},
            caption_style=name_style,
            synthetic_params=params,
        )
        names.append(name)
    return names


def register_synthetic_from_cfg(cfg) -> list[str]:
    """Register the synthetic datasets from ``cfg.DATASETS.SYNTHETIC`` when DATASETS.TRAIN/TEST use one.

    Called by the trainer before building data loaders; generates nothing when no synthetic name is used.
    """
    used = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if n in SYNTHETIC_DATASETS]
    if not used:
        return []
    s = cfg.DATASETS.SYNTHETIC
    return register_synthetic(s.ROOT, int(s.NUM_TRAIN), int(s.NUM_VAL), int(s.SEED), num_test=int(s.NUM_TEST))
