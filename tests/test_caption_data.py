"""Captioning data: COCO-captions and Karpathy json loading, clear errors, the synthetic caption set (deterministic,
varied and true references on the grounding set's scenes), the caption mapper and the caption loaders."""
import json
import os
import re
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.data.caption_mapper import CaptionDatasetMapper
from glip_d2.data.datasets import register_datasets_from_cfg
from glip_d2.data.datasets.captions import (
    load_coco_captions_json,
    load_karpathy_json,
    register_coco_captions,
    register_karpathy_captions,
)
from glip_d2.data.datasets.synthetic import COLORS, SHAPES, generate_synthetic_dataset, render_sample
from glip_d2.data.datasets.synthetic_captions import (
    SYNTHETIC_CAPTION_DATASETS,
    generate_synthetic_captions,
    register_synthetic_captions,
    register_synthetic_captions_from_cfg,
)
from glip_d2.engine.caption_data import build_caption_test_loader, build_caption_train_loader, is_caption_data
from glip_d2.engine.defaults import load_glip_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs", "quick_schedules", "Base-GLIP-tiny.yaml")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SIZES = dict(num_train=12, num_val=4, num_test=4, seed=0)


def _write_images(folder, ids, shape=(40, 60)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((*shape, 3), 30 * i, np.uint8))


@pytest.fixture()
def coco(tmp_path):
    """Three images: 1 with three references (annotations interleaved with image 2's), 2 with one, 3 with none."""
    _write_images(tmp_path, (1, 2, 3))
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 40, "width": 60} for i in (1, 2, 3)],
        "annotations": [
            {"image_id": 1, "caption": "A dog on a sofa.", "id": 10},
            {"image_id": 2, "caption": "an empty room", "id": 11},
            {"image_id": 1, "caption": "  a brown dog lying down ", "id": 12},
            {"image_id": 1, "caption": "a sleeping dog", "id": 13},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path), data


def test_coco_captions_round_trip(coco):
    json_file, root, _ = coco
    records = load_coco_captions_json(json_file, root)
    assert [r["image_id"] for r in records] == [1, 2]  # image 3 has no caption: dropped
    assert records[0] == {"file_name": os.path.join(root, "1.jpg"), "height": 40, "width": 60, "image_id": 1,
                          "captions": ["A dog on a sofa.", "  a brown dog lying down ", "a sleeping dog"]}
    assert records[1]["captions"] == ["an empty room"]
    register_coco_captions("_caption_test_coco", json_file, root, {"extra": 3})
    try:
        meta = MetadataCatalog.get("_caption_test_coco")
        assert (meta.evaluator_type, meta.json_file, meta.image_root, meta.extra) == ("caption", json_file, root, 3)
        assert DatasetCatalog.get("_caption_test_coco") == records
    finally:
        DatasetCatalog.remove("_caption_test_coco")
        MetadataCatalog.remove("_caption_test_coco")


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["annotations"][2].__setitem__("caption", "   "), "annotation id 12: the caption is empty"),
    (lambda d: d["annotations"][1].__setitem__("caption", None), "annotation id 11: the caption must be a string"),
    (lambda d: d["annotations"][3].__setitem__("image_id", 9), "annotation id 13 refers to image_id 9"),
    (lambda d: d.pop("annotations"), "'annotations' list"),
])
def test_coco_captions_errors(coco, tmp_path, mutate, match):
    _, root, data = coco
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        load_coco_captions_json(str(path), root)


def test_missing_files_name_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "captions.json")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_coco_captions_json(missing, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_karpathy_json(missing, str(tmp_path), ("train",))


@pytest.fixture()
def karpathy(tmp_path):
    def image(imgid, split, filepath, sentences, cocoid=None):
        im = {"imgid": imgid, "filename": f"{imgid}.jpg", "split": split,
              "sentences": [{"raw": s, "tokens": s.lower().split(), "sentid": 10 * imgid + j}
                            for j, s in enumerate(sentences)]}
        if filepath is not None:
            im["filepath"] = filepath
        if cocoid is not None:
            im["cocoid"] = cocoid
        return im

    data = {"dataset": "coco", "images": [
        image(0, "train", "train2014", ["A cat.", "Two cats."], cocoid=391895),
        image(1, "restval", "val2014", ["A bus."], cocoid=522418),
        image(2, "val", "val2014", ["A tree."], cocoid=184613),
        image(3, "test", "val2014", ["A car."], cocoid=318219),
        image(4, "train", None, ["A boat.", "A ship.", "A raft."]),  # no filepath, no cocoid
        image(5, "train", "train2014", []),  # no sentence: dropped
    ]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    for im in data["images"]:
        _write_images(tmp_path / im.get("filepath", ""), (im["imgid"],), shape=(30 + im["imgid"], 50))
    return str(path), str(tmp_path), data


def test_karpathy_split_selection(karpathy):
    json_file, root, _ = karpathy
    train = load_karpathy_json(json_file, root, ("train", "restval"))
    assert [r["image_id"] for r in train] == [391895, 522418, 4]  # cocoid when present, else imgid; file order
    assert train[0] == {"file_name": os.path.join(root, "train2014", "0.jpg"), "image_id": 391895,
                        "captions": ["A cat.", "Two cats."]}  # no height/width in this format
    assert train[1]["file_name"] == os.path.join(root, "val2014", "1.jpg")
    assert train[2]["file_name"] == os.path.join(root, "4.jpg") and train[2]["captions"] == ["A boat.", "A ship.",
                                                                                              "A raft."]
    assert [r["image_id"] for r in load_karpathy_json(json_file, root, ("test",))] == [318219]
    assert [r["image_id"] for r in load_karpathy_json(json_file, root, "val")] == [184613]
    with pytest.raises(ValueError, match="splits must be a non-empty subset"):
        load_karpathy_json(json_file, root, ("training",))
    register_karpathy_captions("_caption_test_karpathy", json_file, root, ("train", "restval"))
    try:
        meta = MetadataCatalog.get("_caption_test_karpathy")
        assert meta.evaluator_type == "caption" and meta.splits == ["train", "restval"]
        assert DatasetCatalog.get("_caption_test_karpathy") == train
    finally:
        DatasetCatalog.remove("_caption_test_karpathy")
        MetadataCatalog.remove("_caption_test_karpathy")


def test_karpathy_bad_sentence(karpathy, tmp_path):
    _, root, data = karpathy
    data["images"][1]["sentences"][0]["raw"] = ""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image 522418, sentence 10: the caption is empty"):
        load_karpathy_json(str(path), root, ("restval",))
    assert len(load_karpathy_json(str(path), root, ("train",))) == 2  # other splits are not read


# --- the synthetic caption set ---------------------------------------------------------------------------------

_NUM = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_PLURAL = {"cross": "crosses"}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{_PLURAL.get(s, s + "s"): s for s in SHAPES}}
_NOUNS = ("shape", "shapes", "object", "objects")
_C, _S = "|".join(COLORS), "|".join(_SHAPE_WORDS)
_COUNT_RE = re.compile(rf"\b({'|'.join(_NUM)})(?: (small|large))?(?: ({_C}))? ({_S}|{'|'.join(_NOUNS)})\b")
_THE_RE = re.compile(rf"\bthe(?: (small|large))? ({_C}) ({_S})\b")
_IN_RE = re.compile(rf"\b({'|'.join(_NUM)}) ({_S}) in ((?:{_C})(?:(?:, | and )(?:{_C}))*)")
_REL_RE = re.compile(rf"\b(?:a|an|the)(?: (?:small|large))? ({_C}) ({_S})(?: is)? (to the left of|to the right of|"
                     rf"above|below) (?:a|an|the)(?: (?:small|large))? ({_C}) ({_S})\b")


def _check_true(caption: str, objects: list[dict]) -> int:
    """Assert every checkable claim of ``caption`` about the scene; returns how many claims it made."""
    colors = [o["name"].split(" ")[0] for o in objects]
    shapes = [o["name"].split(" ")[1] for o in objects]
    assert caption == caption.strip().lower() and not caption.endswith("."), caption
    for word in re.findall(r"[a-z]+", caption):  # no colour or shape that is not in the picture
        assert word not in COLORS or word in colors, caption
        assert word not in _SHAPE_WORDS or _SHAPE_WORDS[word] in shapes, caption
    claims = 0
    for num, size, color, noun in _COUNT_RE.findall(caption):
        n = _NUM[num]
        shape = _SHAPE_WORDS.get(noun)
        matching = [o for o, c, s in zip(objects, colors, shapes) if (not color or c == color)
                    and (shape is None or s == shape)]
        assert len(matching) == n, (caption, f"{num} {color} {noun}", [o["name"] for o in objects])
        if size:
            assert n == 1 and matching[0]["size"] == size, caption
        claims += 1
    for size, color, shape in _THE_RE.findall(caption):
        matching = [o for o in objects if o["name"] == f"{color} {_SHAPE_WORDS[shape]}"]
        assert len(matching) == 1 and (not size or matching[0]["size"] == size), caption
        claims += 1
    for _num, shape, listed in _IN_RE.findall(caption):
        of_shape = [c for c, s in zip(colors, shapes) if s == _SHAPE_WORDS[shape]]
        assert set(re.split(", | and ", listed)) == set(of_shape), caption
    for color_a, shape_a, relation, color_b, shape_b in _REL_RE.findall(caption):
        (a,) = [o for o in objects if o["name"] == f"{color_a} {shape_a}"]
        (b,) = [o for o in objects if o["name"] == f"{color_b} {shape_b}"]
        dx, dy = a["centre"] - b["centre"]
        axis, sign = {"to the left of": (dx, -1), "to the right of": (dx, 1), "above": (dy, -1),
                      "below": (dy, 1)}[relation]
        assert axis * sign > 0 and abs(axis) == max(abs(dx), abs(dy)), (caption, a["centre"], b["centre"])
        claims += 1
    return claims


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_captions"))
    assert register_synthetic_captions(root, **SIZES) == list(SYNTHETIC_CAPTION_DATASETS)
    return root


def test_synthetic_captions_true_and_varied(synthetic):
    kinds = Counter()
    for name, split in SYNTHETIC_CAPTION_DATASETS.items():
        assert MetadataCatalog.get(name).evaluator_type == "caption"
        records = DatasetCatalog.get(name)
        assert len(records) == SIZES[f"num_{split}"]
        for i, record in enumerate(records):
            assert record["image_id"] == i + 1
            _, objects = render_sample(np.random.default_rng([SIZES["seed"], SPLIT_CODES[split], i]))
            refs = record["captions"]
            assert len(refs) == 5 and len(set(refs)) == 5, refs  # CAPTIONS_PER_IMAGE distinct references
            for caption in refs:
                assert _check_true(caption, objects) >= 1, caption
                kinds["relation"] += bool(_REL_RE.search(caption))
                kinds["count>1"] += any(_NUM[m[0]] > 1 for m in _COUNT_RE.findall(caption))
                kinds["start"] += caption.split(" ")[0] in ("there", "we") or caption.startswith(("a picture",
                                                                                                    "an image"))
            # the references agree on the scene: every category is named in full by at least one of them
            for o in objects:
                assert any(o["name"] in c or o["name"].split(" ")[1] in c for c in refs), (o["name"], refs)
    assert kinds["relation"] and kinds["count>1"] and kinds["start"], kinds  # relations, counts, sentence starts
    # one reference differs from another in more than its start: orderings / points of view vary
    refs = DatasetCatalog.get("synthetic_captions_train")[0]["captions"]
    bodies = {re.sub(r"^(a picture of|an image with|an image of|a photo showing|there is|there are|we can see|"
                     r"a scene with) ", "", c) for c in refs}
    assert len(bodies) >= 3, refs


def test_synthetic_captions_same_images_as_grounding(synthetic, tmp_path):
    grounding = str(tmp_path / "grounding")
    generate_synthetic_dataset(grounding, num_train=3, num_val=0, num_test=0, seed=SIZES["seed"])
    records = DatasetCatalog.get("synthetic_captions_train")
    for i in range(3):
        with open(records[i]["file_name"], "rb") as f, \
                open(os.path.join(grounding, "images", "train", f"{i + 1:06d}.jpg"), "rb") as g:
            assert f.read() == g.read()
        image, _ = render_sample(np.random.default_rng([SIZES["seed"], 0, i]))
        assert (records[i]["height"], records[i]["width"]) == image.shape[:2]


def test_synthetic_captions_deterministic_and_regenerated(synthetic, tmp_path):
    manifest = generate_synthetic_captions(str(tmp_path / "again"), **SIZES)
    for split in SPLIT_CODES:
        with open(os.path.join(synthetic, f"{split}_captions.json")) as f, \
                open(tmp_path / "again" / f"{split}_captions.json") as g:
            assert json.load(f) == json.load(g)
    with open(os.path.join(synthetic, "manifest.json")) as f:
        assert json.load(f) == manifest
    other = generate_synthetic_captions(str(tmp_path / "other"), **{**SIZES, "seed": 1})
    assert other["seed"] == 1
    with open(os.path.join(synthetic, "train_captions.json")) as f, \
            open(tmp_path / "other" / "train_captions.json") as g:
        assert json.load(f)["annotations"] != json.load(g)["annotations"]
    # changed parameters regenerate the data and re-register the names (the fixture's root is left alone)
    root = str(tmp_path / "changing")
    register_synthetic_captions(root, num_train=2, num_val=1, num_test=1, captions_per_image=3)
    try:
        assert [len(r["captions"]) for r in DatasetCatalog.get("synthetic_captions_train")] == [3, 3]
        register_synthetic_captions(root, num_train=2, num_val=1, num_test=1, captions_per_image=2)
        assert [len(r["captions"]) for r in DatasetCatalog.get("synthetic_captions_train")] == [2, 2]
        with open(os.path.join(root, "manifest.json")) as f:
            assert json.load(f)["captions_per_image"] == 2
    finally:
        register_synthetic_captions(synthetic, **SIZES)  # restore the module fixture's registration
    with pytest.raises(ValueError, match="captions_per_image must be at least 1"):
        generate_synthetic_captions(str(tmp_path / "none"), 1, 1, 1, 0, 0)


# --- mapper and loaders --------------------------------------------------------------------------------------------

def _cfg(**overrides):
    opts = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    for key, value in overrides.items():
        opts += [key, value]
    return load_glip_cfg(BASE, opts)


def test_mapper_train_draws_one_reference_test_keeps_all(coco, karpathy):
    json_file, root, _ = coco
    record = load_coco_captions_json(json_file, root)[0]
    cfg = _cfg()
    train = CaptionDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    drawn = set()
    for _ in range(30):
        out = train(record)
        assert set(out) == {"image", "height", "width", "image_id", "file_name", "caption"}
        drawn.add(out["caption"])
        assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3 and min(out["image"].shape[1:]) == 64
        assert (out["height"], out["width"], out["image_id"]) == (40, 60, 1)
    assert drawn == {"A dog on a sofa.", "a brown dog lying down", "a sleeping dog"}  # stripped, each drawn
    assert record["captions"][1] == "  a brown dog lying down "  # the record itself is untouched
    out = CaptionDatasetMapper(cfg, is_train=False)(record)
    assert "caption" not in out and out["captions"] == ["A dog on a sofa.", "a brown dog lying down", "a sleeping dog"]
    with pytest.raises(ValueError, match="image_id 1: a training record needs at least one caption"):
        train(dict(record, captions=[]))
    with pytest.raises(ValueError, match="image_id 1: reference caption 7 is not a non-empty string"):
        train(dict(record, captions=["ok", 7]))
    # Karpathy records have no size: the mapper takes it from the image
    k_json, k_root, _ = karpathy
    k_record = load_karpathy_json(k_json, k_root, ("restval",))[0]
    out = CaptionDatasetMapper(cfg, is_train=False)(k_record)
    assert (out["height"], out["width"]) == (31, 50) and out["captions"] == ["A bus."]


def test_is_caption_data(synthetic):
    MetadataCatalog.get("_caption_test_detection").set(evaluator_type="coco")
    try:
        assert is_caption_data(["synthetic_captions_train", "synthetic_captions_val"])
        assert not is_caption_data(["_caption_test_detection"]) and not is_caption_data([])
        with pytest.raises(ValueError, match=r"mixes captioning sets \['synthetic_captions_train'\] with other kinds "
                                             r"of data \['_caption_test_detection'\]"):
            is_caption_data(["synthetic_captions_train", "_caption_test_detection"])
    finally:
        MetadataCatalog.remove("_caption_test_detection")


def test_loaders_and_cfg_registration(synthetic, tmp_path):
    cfg = _cfg(**{"DATASETS.TRAIN": "('synthetic_captions_train',)", "DATASETS.TEST": "('synthetic_captions_val',)",
                  "DATASETS.SYNTHETIC_CAPTIONS.ROOT": synthetic, "DATASETS.SYNTHETIC_CAPTIONS.NUM_TRAIN": "12",
                  "DATASETS.SYNTHETIC_CAPTIONS.NUM_VAL": "4", "DATASETS.SYNTHETIC_CAPTIONS.NUM_TEST": "4"})
    assert cfg.DATASETS.SYNTHETIC_CAPTIONS.CAPTIONS_PER_IMAGE == 5 and cfg.DATASETS.SYNTHETIC_CAPTIONS.SEED == 0
    assert register_synthetic_captions_from_cfg(cfg) == list(SYNTHETIC_CAPTION_DATASETS)
    assert set(SYNTHETIC_CAPTION_DATASETS) <= set(register_datasets_from_cfg(cfg))
    assert register_synthetic_captions_from_cfg(_cfg()) == []  # not named: nothing generated or registered
    batch = next(iter(build_caption_train_loader(cfg)))
    assert len(batch) == 2
    refs = {r["image_id"]: r["captions"] for r in DatasetCatalog.get("synthetic_captions_train")}
    for item in batch:
        assert item["caption"] in refs[item["image_id"]] and item["image"].shape[0] == 3
    test_batches = list(build_caption_test_loader(cfg, "synthetic_captions_val"))
    assert len(test_batches) == 4 and all(len(b) == 1 and len(b[0]["captions"]) == 5 for b in test_batches)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": []}))
    register_coco_captions("_caption_test_empty", str(empty), str(tmp_path))
    try:
        with pytest.raises(ValueError, match="have no captioned images"):
            build_caption_test_loader(cfg, "_caption_test_empty")
    finally:
        DatasetCatalog.remove("_caption_test_empty")
        MetadataCatalog.remove("_caption_test_empty")
