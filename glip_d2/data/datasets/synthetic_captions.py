"""Deterministic synthetic image captioning: several true, varied reference captions for each synthetic scene.

Why: captioning code (GLIPv2's caption head, its loss, decoding, the CIDEr evaluator) needs data that downloads
nothing and is exactly reproducible, with captions a small model can learn in CPU minutes. CIDEr rewards n-grams
that the references of an image agree on and discounts n-grams common to all images, so each image gets
``captions_per_image`` *different* references (different sentence starts, orderings and points of view) that all
share the words that matter for that scene (its counts, colours and shapes); a single reference, or identical
references, would make the metric degenerate.

Image ``i`` of a split is the scene of ``synthetic_{split}`` image ``i`` (same seed stream,
:func:`~glip_d2.data.datasets.synthetic.render_sample`), as for ``synthetic_vqa``; its captions are drawn from a
second stream, so they never change the images.

Reference kinds (each true for the scene; lower case, no final period):

* inventory: every category with its exact count, random order: ``"a picture of two red circles and a blue star"``;
* total: the number of objects, then the inventory: ``"three shapes: a blue star and two red circles"``;
* colours: objects counted per colour: ``"two red objects and a blue object"``;
* shapes: objects counted per shape, with their colours: ``"two circles in red and blue and a green star"``, or
  without colours: ``"two circles and a star"``;
* relation: two objects whose categories occur once in the scene, placed by their centres (the relation of the
  grounding set's text captions): ``"a small red circle to the left of a green square and two blue stars"``,
  ``"the red circle is above the green square"`` (only asked when the scene has two such objects).

Every number word or article before a colour / shape / "shape(s)" / "object(s)" is the exact count of that kind of
object in the scene (relations only name objects whose category occurs once), so the references are checkable.

Files under ``root``: ``images/{split}/``, ``{split}_captions.json`` (COCO captions format), ``manifest.json``
(written last; the data is regenerated when parameters change). Registered through
:func:`~glip_d2.data.datasets.captions.register_coco_captions`: ``synthetic_captions_train``,
``synthetic_captions_val`` and ``synthetic_captions_test`` (held out from tuning).
"""
import json
import logging
import os
from collections import Counter

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .captions import register_coco_captions
from .generated_data import begin_generation, ensure_generated, finish_generation, write_jpeg
from .synthetic import COLORS, _relation, render_sample

__all__ = ["SYNTHETIC_CAPTION_DATASETS", "generate_synthetic_captions", "phrase_names_object",
           "register_synthetic_captions", "register_synthetic_captions_from_cfg", "scene_captions"]

logger = logging.getLogger(__name__)

#: registered name -> split
SYNTHETIC_CAPTION_DATASETS = {"synthetic_captions_train": "train", "synthetic_captions_val": "val",
                              "synthetic_captions_test": "test"}
#: Bump when the captions or the json layout change.
GENERATOR_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # the grounding set's codes: same scenes
_CAPTION_STREAM = 102  # extra seed component of the caption stream (synthetic_vqa's questions use 101)
_KINDS = ("inventory", "relation", "colours", "inventory", "shapes", "total")  # inventories: the most complete
_STARTS = ("", "a picture of ", "an image with ", "a photo showing ", "there {be} ", "we can see ", "a scene with ",
           "an image of ")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
            "hexagon": "hexagons", "cross": "crosses", "shape": "shapes", "object": "objects"}
_RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_MAX_TRIES = 40  # draws per wanted reference before giving up on finding a new distinct one


def _count(n: int, words: str, use_one: bool = False) -> str:
    """``"two red circles"``, ``"an orange star"`` (``"one orange star"`` with ``use_one``): ``words`` ends with a
    singular noun."""
    if n == 1:
        det = "one" if use_one else ("an" if words[0] in "aeiou" else "a")
        return f"{det} {words}"
    head, _, noun = words.rpartition(" ")
    plural = _PLURALS.get(noun, noun + "s")
    return f"{_NUMBERS[n] if n < len(_NUMBERS) else n} {head + ' ' if head else ''}{plural}"


def phrase_names_object(phrase: str, category_name: str) -> bool:
    """Whether a caption phrase can refer to an object of ``category_name`` ("red circle"): its shape word (or
    "shape"/"object", singular or plural) is in the phrase, and so is its colour when the phrase names a colour.
    The ground truth that pseudo boxes of these captions are checked against (self-training tests)."""
    colour, shape = category_name.split()
    singular = {plural: noun for noun, plural in _PLURALS.items()}
    words = [singular.get(w, w) for w in phrase.lower().split()]
    colours = [w for w in words if w in COLORS]
    return (shape in words or "shape" in words or "object" in words) and (not colours or colour in colours)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _start(rng, first: str) -> str:
    start = _STARTS[int(rng.integers(len(_STARTS)))]
    return start.replace("{be}", "is" if first.split(" ")[0] in ("a", "an", "one") else "are")


def _shuffled(items: list, rng) -> list:
    return [items[int(i)] for i in rng.permutation(len(items))]


def _inventory(objects: list[dict], rng) -> list[str]:
    counts = Counter(o["name"] for o in objects)
    return [_count(n, name) for name, n in _shuffled(list(counts.items()), rng)]


def _caption(kind: str, objects: list[dict], rng) -> str | None:
    """One reference of ``kind`` for the scene, or None when the scene does not allow that kind."""
    if kind == "inventory":
        parts = _inventory(objects, rng)
        return _start(rng, parts[0]) + _join(parts)
    if kind == "total":
        noun = ("shape", "object")[int(rng.integers(2))]
        head = _count(len(objects), noun, use_one=True)
        return ("" if rng.random() < 0.5 else "a picture of ") + f"{head}: {_join(_inventory(objects, rng))}"
    if kind == "colours":
        noun = ("shape", "object")[int(rng.integers(2))]
        counts = Counter(o["name"].split(" ")[0] for o in objects)
        parts = [_count(n, f"{color} {noun}") for color, n in _shuffled(list(counts.items()), rng)]
        return _start(rng, parts[0]) + _join(parts)
    if kind == "shapes":
        with_colors = rng.random() < 0.7
        by_shape: dict[str, list[str]] = {}
        for o in objects:
            color, shape = o["name"].split(" ")
            by_shape.setdefault(shape, []).append(color)
        parts = []
        for shape, colors in _shuffled(list(by_shape.items()), rng):
            distinct = list(dict.fromkeys(colors))
            if not with_colors:
                parts.append(_count(len(colors), shape))
            elif len(distinct) == 1:
                parts.append(_count(len(colors), f"{distinct[0]} {shape}"))
            else:
                parts.append(f"{_count(len(colors), shape)} in {_join(distinct)}")
        return _start(rng, parts[0]) + _join(parts)
    if kind == "relation":
        counts = Counter(o["name"] for o in objects)
        unique = [o for o in objects if counts[o["name"]] == 1]
        if len(unique) < 2:
            return None
        i, j = (int(k) for k in rng.choice(len(unique), size=2, replace=False))
        a, b = unique[i], unique[j]
        relation = _RELATIONS[_relation(a, b)]
        sizes = rng.random() < 0.5

        def name(o):
            return f"{o['size']} {o['name']}" if sizes and o["size"] else o["name"]

        if rng.random() < 0.3:
            return f"the {name(a)} is {relation} the {name(b)}"
        first = _count(1, name(a))
        text = _start(rng, first) + f"{first} {relation} {_count(1, name(b))}"
        rest = [o for o in objects if o is not a and o is not b]
        if rest and rng.random() < 0.6:
            text += " and " + _join(_inventory(rest, rng))
        return text
    raise ValueError(f"unknown caption kind {kind!r}")


def scene_captions(objects: list[dict], rng: np.random.Generator, count: int = 5) -> list[str]:
    """``count`` distinct references for a scene of :func:`render_sample` objects, kinds taken in turn from a random
    start. A scene that allows fewer distinct sentences (not the case for ``count`` <= 10: even one object has over
    20) repeats its references rather than fail."""
    if not objects:
        raise ValueError("a scene without objects has nothing to caption")
    captions: list[str] = []
    offset = int(rng.integers(len(_KINDS)))
    for slot in range(_MAX_TRIES * count):
        if len(captions) >= count:
            break
        made = _caption(_KINDS[(offset + slot) % len(_KINDS)], objects, rng)
        if made is not None and made not in captions:
            captions.append(made)
    return [captions[k % len(captions)] for k in range(count)]


def _generate_split(root: str, split: str, num_images: int, seed: int, per_image: int) -> dict:
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img, objects = render_sample(np.random.default_rng([seed, _SPLIT_CODES[split], i]))
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i, _CAPTION_STREAM])
        image_id = i + 1
        images.append(write_jpeg(image_dir, image_id, img))
        for caption in scene_captions(objects, rng, per_image):
            annotations.append({"image_id": image_id, "caption": caption, "id": len(annotations) + 1})
    info = {"description": "glip_d2 synthetic captions", "version": GENERATOR_VERSION}
    return {"info": info, "licenses": [], "type": "captions", "images": images, "annotations": annotations}


def _files(root: str, split: str) -> tuple[str, str]:
    """(captions json, image folder) of a split."""
    return os.path.join(root, f"{split}_captions.json"), os.path.join(root, "images", split)


def _manifest(num_train, num_val, num_test, seed, captions_per_image) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "num_test": int(num_test), "seed": int(seed), "captions_per_image": int(captions_per_image)}


def generate_synthetic_captions(root: str, num_train: int = 400, num_val: int = 50, num_test: int = 50,
                                seed: int = 0, captions_per_image: int = 5) -> dict:
    """(Re)generate the captioning set under ``root``; returns the manifest (written last)."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test), ("seed", seed),
                        ("captions_per_image", captions_per_image)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if captions_per_image < 1:
        raise ValueError("captions_per_image must be at least 1: an image without references cannot be scored")
    manifest = _manifest(num_train, num_val, num_test, seed, captions_per_image)
    begin_generation(root)
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        data = _generate_split(root, split, int(count), int(seed), int(captions_per_image))
        with open(_files(root, split)[0], "w") as f:
            json.dump(data, f, separators=(",", ":"))
    finish_generation(root, manifest)
    return manifest


def register_synthetic_captions(root: str = "datasets/synthetic_captions", num_train: int = 400, num_val: int = 50,
                                num_test: int = 50, seed: int = 0, captions_per_image: int = 5) -> list[str]:
    """Generate (first use / changed parameters) and register ``synthetic_captions_{train,val,test}``; returns the
    names. In distributed runs only the main process writes."""
    manifest = _manifest(num_train, num_val, num_test, seed, captions_per_image)
    ensure_generated(root, manifest, [p for split in _SPLIT_CODES for p in _files(root, split)],
                     lambda: generate_synthetic_captions(root, num_train, num_val, num_test, seed, captions_per_image),
                     "synthetic captions")
    params = dict(root=os.path.abspath(root), **manifest)
    registered = all(n in DatasetCatalog.list()
                     and MetadataCatalog.get(n).get("synthetic_captions_params", None) == params
                     for n in SYNTHETIC_CAPTION_DATASETS)
    if not registered:
        for name, split in SYNTHETIC_CAPTION_DATASETS.items():
            json_file, image_root = _files(root, split)
            register_coco_captions(name, json_file, image_root, {"synthetic_captions_params": params})
    return list(SYNTHETIC_CAPTION_DATASETS)


def register_synthetic_captions_from_cfg(cfg) -> list[str]:
    """Register the synthetic caption sets from ``cfg.DATASETS.SYNTHETIC_CAPTIONS`` when DATASETS.TRAIN/TEST use
    one."""
    used = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if n in SYNTHETIC_CAPTION_DATASETS]
    if not used:
        return []
    s = cfg.DATASETS.SYNTHETIC_CAPTIONS
    return register_synthetic_captions(s.ROOT, int(s.NUM_TRAIN), int(s.NUM_VAL), int(s.NUM_TEST), int(s.SEED),
                                       int(s.CAPTIONS_PER_IMAGE))
