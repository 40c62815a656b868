"""Dataset validation at load time (DATASETS.ON_INVALID) and tools/check_dataset.py.

Each user probe that used to train silently wrong or crash hours in is a regression test here: the problem is
reported when the data is loaded, naming the image / box / category, and ``skip`` / ``fix`` drop or repair it
with counts.
"""
import copy
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from glip_d2 import add_glip_config
from glip_d2.data.validation import (
    DatasetValidationError,
    get_validated_dataset_dicts,
    validate_dataset_dicts,
)

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def _unregister(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _coco_set(tmp_path, name, annotations, *, images=None, categories=CATEGORIES, write_images=True):
    """Register a COCO json (images 320x240 written as PNG) through DATASETS.REGISTER_COCO; return the cfg."""
    from glip_d2.data.datasets import register_datasets_from_cfg

    images = images or [{"id": 3, "file_name": "a.png", "height": 240, "width": 320},
                        {"id": 4, "file_name": "b.png", "height": 240, "width": 320}]
    if write_images:
        for img in images:
            Image.fromarray(np.full((img["height"], img["width"], 3), 128, np.uint8)).save(tmp_path / img["file_name"])
    anns = [dict({"id": i + 1, "iscrowd": 0, "area": 100.0}, **a) for i, a in enumerate(annotations)]
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    _unregister(name)
    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.REGISTER_COCO = [(name, str(json_file), str(tmp_path))]
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    register_datasets_from_cfg(cfg)
    return cfg


def _load(name, policy, **kw):
    return get_validated_dataset_dicts([name], policy=policy, filter_empty=False, **kw)


GOOD = {"image_id": 4, "category_id": 2, "bbox": [10, 20, 30, 40]}


# ------------------------------------------------------------------------------------------------- user probes
def test_negative_width_box_is_an_error_naming_image_and_box(tmp_path):
    _coco_set(tmp_path, "val_negw", [{"image_id": 3, "category_id": 1, "bbox": [203, 61, -20, 69]}, GOOD])
    with pytest.raises(DatasetValidationError) as e:
        _load("val_negw", "error")
    msg = str(e.value)
    assert "negative_box: 1 annotation" in msg and "image_id=3" in msg and "a.png" in msg
    assert "bbox [203, 61, -20, 69] (XYWH_ABS)" in msg and "DATASETS.ON_INVALID" in msg


@pytest.mark.parametrize("policy", ["skip", "fix"])
def test_negative_width_box_is_dropped_and_counted(tmp_path, policy):
    _coco_set(tmp_path, "val_negw_skip", [{"image_id": 3, "category_id": 1, "bbox": [203, 61, -20, 69]},
                                          {"image_id": 3, "category_id": 2, "bbox": [1, 2, 3, 4]}, GOOD])
    dicts, report = validate_dataset_dicts(DatasetCatalog.get("val_negw_skip"), MetadataCatalog.get("val_negw_skip"),
                                           policy)
    a, b = dicts
    assert [x["bbox"] for x in a["annotations"]] == [[1, 2, 3, 4]]  # the [183, 203] box is not trained
    assert report.counts == {"negative_box": 1} and report.annotations_dropped == 1 and report.images_dropped == 0
    assert "1 annotation dropped, 0 clipped" in report.summary()


def test_all_nan_boxes_stop_before_training(tmp_path):
    """Every box NaN: an error at load under every policy, not a run that exits 0 with zero box loss."""
    from glip_d2.engine import GLIPTrainer

    nan = [{"image_id": 3, "category_id": 1, "bbox": [float("nan")] * 4},
           {"image_id": 4, "category_id": 2, "bbox": [1, float("nan"), 3, 4]}]
    cfg = _coco_set(tmp_path, "train_nan", nan)
    with pytest.raises(DatasetValidationError, match=r"invalid_box: 2 annotations"):
        GLIPTrainer.build_train_loader(cfg)
    cfg.DATASETS.ON_INVALID = "skip"
    with pytest.raises(DatasetValidationError, match="No valid annotation is left in 'train_nan'"):
        GLIPTrainer.build_train_loader(cfg)


def test_missing_image_is_an_error_at_load_naming_the_file(tmp_path):
    from glip_d2.engine import GLIPTrainer

    cfg = _coco_set(tmp_path, "train_missing", [GOOD, dict(GOOD, image_id=3)])
    os.remove(tmp_path / "a.png")
    with pytest.raises(DatasetValidationError, match=r"missing_image: 1 image(.|\n)*image_id=3 \('.*a\.png'\)"):
        GLIPTrainer.build_train_loader(cfg)
    (d,), report = validate_dataset_dicts(DatasetCatalog.get("train_missing"), None, "skip")
    assert d["image_id"] == 4 and report.images_dropped == 1 and report.counts == {"missing_image": 1}


def test_empty_category_name_is_an_error_naming_the_category(tmp_path):
    cats = CATEGORIES + [{"id": 22, "name": ""}]
    _coco_set(tmp_path, "val_emptyname", [GOOD], categories=cats)
    for policy in ("error", "skip", "fix"):  # in every prompt: nothing can be dropped to repair it
        with pytest.raises(DatasetValidationError, match=r"category_id 2 \(dataset id 22\): name ''") as e:
            _load("val_emptyname", policy)
        assert "empty_category_name: 1 category" in str(e.value)


# --------------------------------------------------------------------------------------------- other behaviour
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from glip_d2.data.datasets import register_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    register_synthetic(str(root), num_train=4, num_val=2, seed=0, style="list")
    return str(root)


def test_valid_synthetic_set_passes_untouched(synthetic):
    dicts = DatasetCatalog.get("synthetic_train")
    before = copy.deepcopy(dicts)
    out, report = validate_dataset_dicts(dicts, MetadataCatalog.get("synthetic_train"), "fix", name="synthetic_train")
    assert out is dicts and dicts == before and report.ok
    assert (report.files_checked, report.files_decoded, report.num_categories) == (4, 4, 36)
    assert "no problems found" in report.summary()


def test_fix_clips_a_box_outside_the_image_exactly(tmp_path):
    _coco_set(tmp_path, "val_outside", [
        {"image_id": 3, "category_id": 1, "bbox": [300, -10, 40, 30]},  # x to 340 > 320, y from -10
        {"image_id": 3, "category_id": 1, "bbox": [400, 10, 40, 30]},  # entirely outside: nothing to keep
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 320.5, 240.5]},  # within the 1 px tolerance: untouched
    ])
    dicts = DatasetCatalog.get("val_outside")
    fixed, report = validate_dataset_dicts(dicts, MetadataCatalog.get("val_outside"), "fix", check_files=False)
    assert [a["bbox"] for a in fixed[0]["annotations"]] == [[300.0, 0.0, 20.0, 20.0], [0, 0, 320.5, 240.5]]
    assert report.counts == {"box_outside_image": 2}
    assert (report.annotations_clipped, report.annotations_dropped) == (1, 1)
    assert dicts[0]["annotations"][0]["bbox"] == [300, -10, 40, 30]  # input not modified
    skipped, _ = validate_dataset_dicts(dicts, MetadataCatalog.get("val_outside"), "skip", check_files=False)
    assert [a["bbox"] for a in skipped[0]["annotations"]] == [[0, 0, 320.5, 240.5]]
    xyxy = {"bbox": [300, -10, 340, 20], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    (d,), _ = validate_dataset_dicts([{"image_id": 1, "height": 240, "width": 320, "annotations": [xyxy]}], None,
                                     "fix", check_files=False)
    assert d["annotations"][0]["bbox"] == [300.0, 0.0, 320.0, 20.0]


def _grounding_record(spans, eval_spans=None):
    record = {"image_id": 9, "file_name": "x.jpg", "height": 50, "width": 50, "caption": "a red dog",
              "annotations": [{"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                               "tokens_positive": s} for s in spans]}
    if eval_spans is not None:
        record["tokens_positive_eval"] = eval_spans
    return record


def test_caption_span_outside_the_caption_is_reported():
    records = [_grounding_record([[[2, 9]], [[6, 12]]])]  # "red dog"; [6, 12) runs past the 9 characters
    with pytest.raises(DatasetValidationError, match=r"image_id=9 .*annotation #1 span \[6, 12\] in a caption of "
                                                     r"length 9 \('a red dog'\)"):
        validate_dataset_dicts(records, None, "error", check_files=False)
    (d,), report = validate_dataset_dicts(records, None, "skip", check_files=False)
    assert [a["tokens_positive"] for a in d["annotations"]] == [[[2, 9]]]
    assert report.counts == {"span_outside_caption": 1}
    bad_eval = [_grounding_record([[[2, 9]]], eval_spans=[[[2, 9]], [[8, 3]]]), _grounding_record([[[0, 1]]])]
    kept, report = validate_dataset_dicts(bad_eval, None, "skip", check_files=False)
    assert kept == bad_eval[1:] and report.counts == {"eval_span_outside_caption": 1}


def test_unknown_category_and_duplicate_names():
    meta = {"thing_classes": ["cat", "Traffic_light", "traffic light"]}
    records = [{"image_id": 1, "height": 50, "width": 50, "annotations": [
        {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
        {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]}]
    with pytest.raises(DatasetValidationError) as e:
        validate_dataset_dicts(records, meta, "error", check_files=False)
    assert "category_id 3 (thing_classes has 3 names: 0..2)" in str(e.value)
    assert "category_id 2: name 'traffic light' repeats category_id 1 ('Traffic_light')" in str(e.value)
    (d,), report = validate_dataset_dicts(records, meta, "skip", check_files=False)  # duplicates: warned, kept
    assert [a["category_id"] for a in d["annotations"]] == [0]
    assert report.counts == {"unknown_category": 1, "duplicate_category_name": 1} and not report.errors


def test_empty_and_undecodable_files_are_reported(tmp_path):
    _coco_set(tmp_path, "val_files", [GOOD, dict(GOOD, image_id=3)])
    Path(tmp_path / "a.png").write_bytes(b"")
    dicts = DatasetCatalog.get("val_files")
    with pytest.raises(DatasetValidationError, match="empty_image: 1 image"):
        validate_dataset_dicts(dicts, None, "error")
    Path(tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetValidationError, match="unreadable_image: 1 image"):
        validate_dataset_dicts(dicts, None, "error", decode_sample=2)
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DatasetValidationError, match="decoded width x height 20x10, record says 320x240"):
        validate_dataset_dicts(dicts, None, "error", decode_sample=2)
    out, report = validate_dataset_dicts(dicts, None, "skip", decode_sample=0)  # not decoded: not seen
    assert out is dicts and report.files_decoded == 0


def test_trainer_test_loader_validates(tmp_path):
    from glip_d2.engine import GLIPTrainer

    cfg = _coco_set(tmp_path, "val_loader", [GOOD, {"image_id": 3, "category_id": 1, "bbox": [5, 5, 0, 8]}])
    cfg.MODEL.LANGUAGE.MODEL_NAME = "embedded-minilm"
    with pytest.raises(DatasetValidationError, match="empty_box: 1 annotation"):
        GLIPTrainer.build_test_loader(cfg, "val_loader")
    cfg.DATASETS.ON_INVALID = "skip"
    loader = GLIPTrainer.build_test_loader(cfg, "val_loader")
    assert len(loader.dataset) == 1  # the image whose only box was empty is dropped


# ------------------------------------------------------------------------------------------ tools/check_dataset.py
def _tool():
    spec = importlib.util.spec_from_file_location("check_dataset", REPO / "tools" / "check_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_dataset_tool_reports_and_draws(synthetic, tmp_path, capsys):
    out = tmp_path / "vis"
    config = str(REPO / "configs" / "quick_schedules" / "glip_tiny_synthetic.yaml")
    rc = _tool().main(["--config-file", config, "--split", "train", "--num-vis", "3", "--output", str(out),
                       "DATASETS.SYNTHETIC.ROOT", synthetic, "DATASETS.SYNTHETIC.NUM_TRAIN", "4",
                       "DATASETS.SYNTHETIC.NUM_VAL", "2"])
    printed = capsys.readouterr().out
    assert rc == 0 and "Dataset check of 'synthetic_train'" in printed and "no problems found" in printed
    pictures = sorted(os.listdir(out))
    assert len(pictures) == 3 and all(p.startswith("train_synthetic_train_") and p.endswith(".jpg") for p in pictures)
    image = np.asarray(Image.open(out / pictures[0]))
    assert image.shape[1] >= 640 and image[:8, -100:].mean() > 240  # the white prompt band above the picture


def test_check_dataset_tool_exits_1_on_bad_data(tmp_path, capsys):
    cfg = _coco_set(tmp_path, "tool_bad", [{"image_id": 3, "category_id": 1, "bbox": [203, 61, -20, 69]}, GOOD])
    (name, json_file, image_root), = cfg.DATASETS.REGISTER_COCO
    rc = _tool().main(["--config-file", str(REPO / "configs" / "quick_schedules" / "glip_tiny_synthetic.yaml"),
                       "--split", "test", "DATASETS.REGISTER_COCO", f'(("{name}", "{json_file}", "{image_root}"),)',
                       "DATASETS.TEST", f'("{name}",)', "DATASETS.TRAIN", f'("{name}",)',
                       "DATASETS.ON_INVALID", "error"])  # the GLIP configs skip bad boxes; the default stops
    printed = capsys.readouterr().out
    assert rc == 1 and "negative_box: 1 annotation" in printed and "training would stop here" in printed
