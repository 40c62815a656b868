"""Deterministic synthetic VQA: questions with 10 human-like answers about the synthetic grounding scenes.

Why: VQA code needs data that downloads nothing and is exactly reproducible, with answers a small model can learn
in CPU minutes and a metric whose leave-one-out rule matters. Image ``i`` of a split is the scene of
``synthetic_{split}`` image ``i`` (same seed stream, :func:`~glip_d2.data.datasets.synthetic.render_sample`); its
questions are drawn from a second stream, so they never change the images.

Question kinds, only asked when the scene makes the answer unambiguous (``answer_type`` as VQA v2):

* ``"what color is the triangle?"`` (other): only when exactly one object has that shape;
* ``"what shape is the blue object?"`` (other): only when exactly one object has that colour;
* ``"how many circles are there?"`` (number): a shape in the scene, or any shape (answers 0-5);
* ``"is there a red star?"`` (yes/no): alternately a category present (yes) and an absent one sharing its colour
  or shape with a present object (no), so yes and no are exactly balanced and "no" needs the picture.

Each question gets 10 answers in the VQA v2 json format: the true one, and with probability ``noise_prob`` one to
three answers replaced by a plausible mistake (a synonym such as "violet" for purple, a neighbouring count, another
colour or shape, the opposite yes/no), so the majority stays the true answer and the official leave-one-out
accuracy of the true answer is below 1 for those questions. The annotations also carry the boxes each question
refers to (``boxes`` with ``tokens_positive`` spans in the question; see ``glip_d2.data.datasets.vqa``).

Files under ``root``: ``images/{split}/``, ``{split}_questions.json`` (with an ``images`` list),
``{split}_annotations.json``, ``manifest.json`` (written last; the data is regenerated when parameters change).
Everything is registered through :func:`~glip_d2.data.datasets.vqa.register_vqa`: ``synthetic_vqa_train`` builds
the answer vocabulary, ``synthetic_vqa_val`` / ``synthetic_vqa_test`` share it; test is held out from tuning.
"""
import json
import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .generated_data import begin_generation, ensure_generated, finish_generation, write_jpeg
from .synthetic import COLORS, SHAPES, render_sample
from .vqa import register_vqa

__all__ = ["SYNTHETIC_VQA_DATASETS", "generate_synthetic_vqa", "register_synthetic_vqa",
           "register_synthetic_vqa_from_cfg"]

logger = logging.getLogger(__name__)

#: registered name -> split
SYNTHETIC_VQA_DATASETS = {"synthetic_vqa_train": "train", "synthetic_vqa_val": "val", "synthetic_vqa_test": "test"}
#: Bump when questions, answers or the json layout change.
GENERATOR_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # the grounding set's codes: same scenes
_QUESTION_STREAM = 101  # extra seed component of the question stream
_KINDS = ("yes/no", "color", "count", "shape")
_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
            "hexagon": "hexagons", "cross": "crosses"}
_SYNONYMS = {"red": "crimson", "green": "lime", "blue": "navy", "yellow": "gold", "purple": "violet",
             "orange": "amber", "circle": "round", "square": "box", "triangle": "pyramid", "star": "asterisk",
             "hexagon": "polygon", "cross": "plus"}


def _split_objects(objects):
    colors = [o["name"].split(" ")[0] for o in objects]
    shapes = [o["name"].split(" ")[1] for o in objects]
    return colors, shapes


def _question(kind: str, objects: list, rng, want_yes: bool):
    """(question, answer, answer_type, question_type, [(object, span)]) or None when this kind is not askable."""
    colors, shapes = _split_objects(objects)
    if kind == "color":
        unique = [s for s in SHAPES if shapes.count(s) == 1]
        if not unique:
            return None
        shape = unique[int(rng.integers(len(unique)))]
        q = f"what color is the {shape}?"
        start = q.index(shape)
        obj = objects[shapes.index(shape)]
        return q, colors[shapes.index(shape)], "other", "what color is the", [(obj, (start, start + len(shape)))]
    if kind == "shape":
        unique = [c for c in COLORS if colors.count(c) == 1]
        if not unique:
            return None
        color = unique[int(rng.integers(len(unique)))]
        q = f"what shape is the {color} object?"
        start = q.index(color)
        obj = objects[colors.index(color)]
        span = (start, start + len(color) + len(" object"))
        return q, shapes[colors.index(color)], "other", "what shape is the", [(obj, span)]
    if kind == "count":
        pool = shapes if rng.random() < 0.5 else list(SHAPES)
        shape = pool[int(rng.integers(len(pool)))]
        word = _PLURALS[shape]
        q = f"how many {word} are there?"
        start = q.index(word)
        refs = [(o, (start, start + len(word))) for o, s in zip(objects, shapes) if s == shape]
        return q, str(len(refs)), "number", "how many", refs
    present = {(c, s) for c, s in zip(colors, shapes)}
    if want_yes:
        color, shape = sorted(present)[int(rng.integers(len(present)))]
    else:  # an absent category that shares its colour or its shape with an object in the picture
        near = sorted((c, s) for c in COLORS for s in SHAPES
                      if (c, s) not in present and (c in colors or s in shapes))
        color, shape = near[int(rng.integers(len(near)))]
    name = f"{color} {shape}"
    q = f"is there a {name}?"
    start = q.index(name)
    refs = [(o, (start, start + len(name))) for o, c, s in zip(objects, colors, shapes) if (c, s) == (color, shape)]
    return q, "yes" if want_yes else "no", "yes/no", "is there a", refs


def _mistake(answer: str, answer_type: str, rng) -> str:
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        return str(max(0, int(answer) + (1 if rng.random() < 0.5 or answer == "0" else -1)))
    if rng.random() < 0.5:
        return _SYNONYMS[answer]
    pool = [a for a in (COLORS if answer in COLORS else SHAPES) if a != answer]
    return pool[int(rng.integers(len(pool)))]


def _answers(answer: str, answer_type: str, rng, noise_prob: float) -> list[dict]:
    given = [answer] * 10
    if rng.random() < noise_prob:
        for j in rng.choice(10, size=int(rng.integers(1, 4)), replace=False):
            given[int(j)] = _mistake(answer, answer_type, rng)
    return [{"answer": a, "answer_confidence": "yes" if a == answer else "maybe", "answer_id": j + 1}
            for j, a in enumerate(given)]


def _generate_split(root: str, split: str, num_images: int, seed: int, per_image: int, noise_prob: float):
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, questions, annotations = [], [], []
    next_yes = True
    for i in range(num_images):
        img, objects = render_sample(np.random.default_rng([seed, _SPLIT_CODES[split], i]))
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i, _QUESTION_STREAM])
        image_id = i + 1
        images.append(write_jpeg(image_dir, image_id, img))
        asked, offset = set(), int(rng.integers(len(_KINDS)))
        for slot in range(4 * per_image):
            if len(asked) >= per_image:
                break
            kind = _KINDS[(offset + slot) % len(_KINDS)]
            made = _question(kind, objects, rng, next_yes)
            if made is None or made[0] in asked:
                continue
            question, answer, answer_type, question_type, refs = made
            next_yes = (not next_yes) if answer_type == "yes/no" else next_yes
            asked.add(question)
            question_id = image_id * 100 + len(asked)
            questions.append({"image_id": image_id, "question": question, "question_id": question_id})
            boxes = [{"bbox": [round(float(o["box"][0]), 2), round(float(o["box"][1]), 2),
                               round(float(o["box"][2] - o["box"][0]), 2), round(float(o["box"][3] - o["box"][1]), 2)],
                      "category_id": int(o["category_id"]), "tokens_positive": [list(span)]} for o, span in refs]
            annotations.append({
                "question_id": question_id, "image_id": image_id, "answers": _answers(answer, answer_type, rng,
                                                                                      noise_prob),
                "multiple_choice_answer": answer, "answer_type": answer_type, "question_type": question_type,
                "boxes": boxes,
            })
    info = {"description": "glip_d2 synthetic VQA", "version": GENERATOR_VERSION}
    return {"info": info, "images": images, "questions": questions}, {"info": info, "annotations": annotations}


def _files(root: str, split: str) -> tuple[str, str, str]:
    return (os.path.join(root, f"{split}_questions.json"), os.path.join(root, f"{split}_annotations.json"),
            os.path.join(root, "images", split))


def generate_synthetic_vqa(root: str, num_train: int = 400, num_val: int = 50, num_test: int = 50, seed: int = 0,
                           questions_per_image: int = 4, noise_prob: float = 0.3) -> dict:
    """(Re)generate the VQA set under ``root``; returns the manifest (written last)."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test), ("seed", seed),
                        ("questions_per_image", questions_per_image)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not 0.0 <= noise_prob <= 1.0:
        raise ValueError(f"noise_prob must lie in [0, 1], got {noise_prob}")
    manifest = _manifest(num_train, num_val, num_test, seed, questions_per_image, noise_prob)
    begin_generation(root)
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        data = _generate_split(root, split, int(count), int(seed), int(questions_per_image), float(noise_prob))
        for path, content in zip(_files(root, split)[:2], data):
            with open(path, "w") as f:
                json.dump(content, f, separators=(",", ":"))
    finish_generation(root, manifest)
    return manifest


def _manifest(num_train, num_val, num_test, seed, questions_per_image, noise_prob) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "num_test": int(num_test), "seed": int(seed), "questions_per_image": int(questions_per_image),
            "noise_prob": float(noise_prob)}


def register_synthetic_vqa(root: str = "datasets/synthetic_vqa", num_train: int = 400, num_val: int = 50,
                           num_test: int = 50, seed: int = 0, questions_per_image: int = 4, noise_prob: float = 0.3,
                           min_answer_count: int = 9) -> list[str]:
    """Generate (first use / changed parameters) and register ``synthetic_vqa_{train,val,test}``; returns the names.
    In distributed runs only the main process writes."""
    manifest = _manifest(num_train, num_val, num_test, seed, questions_per_image, noise_prob)
    ensure_generated(root, manifest, [p for split in _SPLIT_CODES for p in _files(root, split)],
                     lambda: generate_synthetic_vqa(root, num_train, num_val, num_test, seed, questions_per_image,
                                                    noise_prob),
                     "synthetic VQA data")
    params = dict(root=os.path.abspath(root), min_answer_count=int(min_answer_count), **manifest)
    registered = all(n in DatasetCatalog.list() and MetadataCatalog.get(n).get("synthetic_vqa_params", None) == params
                     for n in SYNTHETIC_VQA_DATASETS)
    if not registered:
        for name, split in SYNTHETIC_VQA_DATASETS.items():
            questions, annotations, images = _files(root, split)
            register_vqa(name, questions, annotations, images, None if split == "train" else "synthetic_vqa_train",
                         min_answer_count=min_answer_count, synthetic_vqa_params=params)
    return list(SYNTHETIC_VQA_DATASETS)


def register_synthetic_vqa_from_cfg(cfg) -> list[str]:
    """Register the synthetic VQA sets from ``cfg.DATASETS.SYNTHETIC_VQA`` when DATASETS.TRAIN/TEST use one."""
    used = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if n in SYNTHETIC_VQA_DATASETS]
    if not used:
        return []
    s = cfg.DATASETS.SYNTHETIC_VQA
    return register_synthetic_vqa(s.ROOT, int(s.NUM_TRAIN), int(s.NUM_VAL), int(s.NUM_TEST), int(s.SEED),
                                  int(s.QUESTIONS_PER_IMAGE), float(s.NOISE_PROB), int(s.MIN_ANSWER_COUNT))
