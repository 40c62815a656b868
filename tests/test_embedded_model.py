"""The embedded model: the compact file format (what is left out, float16, exact round trip up to float16), the
per-object name accuracy it is judged by, and the shipped file itself on held-out synthetic pictures."""
import logging
import re

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.embedded_model import CONFIG_FILE, OMITTED_PREFIXES, write_compact_checkpoint
from glip_d2.engine.defaults import load_glip_cfg
from glip_d2.evaluation import best_name_per_object


def test_best_name_per_object_takes_the_top_scoring_overlapping_box():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 31], [40, 40, 45, 45]])
    scores = torch.tensor([0.4, 0.9, 0.3, 0.99])
    classes = torch.tensor([1, 2, 3, 4])
    # object 0: two overlapping boxes, the 0.9 one wins; object 1: one box; object 2: nothing overlaps by IoU >= 0.5
    assert best_name_per_object(gt, boxes, scores, classes) == [2, 3, None]
    assert best_name_per_object(gt, boxes[:0], scores[:0], classes[:0]) == [None, None, None]
    assert best_name_per_object(gt, boxes, scores, classes, iou_threshold=0.9) == [1, 3, None]


def test_name_accuracy_evaluator_counts_objects_and_words():
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import Boxes, BoxMode, Instances

    from glip_d2.evaluation import NameAccuracyEvaluator

    name = "name_accuracy_unit_test"
    records = [{"image_id": 1, "annotations": [
        {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},   # red star: named right
        {"bbox": [20, 20, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},  # blue circle: called red circle
        {"bbox": [40, 40, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2},  # red circle: missed
    ]}]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["red star", "blue circle", "red circle"]
    evaluator = NameAccuracyEvaluator(name, score_threshold=0.2)
    evaluator.reset()
    out = Instances((64, 64))
    out.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 30], [40, 40, 50, 50]]))
    out.scores = torch.tensor([0.9, 0.8, 0.5, 0.1])  # the last is under the score threshold
    out.pred_classes = torch.tensor([0, 2, 1, 2])
    evaluator.process([{"image_id": 1}], [{"instances": out}])
    result = evaluator.evaluate()["names"]
    assert result["name_accuracy"] == pytest.approx(100 / 3) and result["found"] == pytest.approx(200 / 3)
    assert result["name_accuracy_when_found"] == 50.0 and result["objects"] == 3
    assert result["colour_accuracy_when_found"] == 50.0 and result["shape_accuracy_when_found"] == 100.0
    with pytest.raises(KeyError, match="image_id 7"):
        evaluator.process([{"image_id": 7}], [{"instances": out}])


def test_compact_file_leaves_out_the_text_encoder_and_round_trips(tmp_path, caplog):
    cfg = load_glip_cfg(CONFIG_FILE, ["MODEL.MOBILENET.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg)
    full = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 3}, full)
    written = write_compact_checkpoint(str(full), str(tmp_path / "compact.pth"))
    data = torch.load(tmp_path / "compact.pth", weights_only=True)
    assert written["tensors"] == len(data["model"]) and not list(tmp_path.glob("*.tmp*"))
    assert not any(k.startswith(OMITTED_PREFIXES) for k in data["model"])
    assert {v.dtype for v in data["model"].values() if v.is_floating_point()} == {torch.float16}
    torch.manual_seed(1)
    fresh = build_model(cfg)  # other random init; the same pretrained text encoder
    with caplog.at_level(logging.INFO, logger="glip_d2"):
        GLIPCheckpointer(fresh).load(str(tmp_path / "compact.pth"))
    assert "not in the file by design" in caplog.text
    assert "not found in the checkpoint" not in caplog.text
    theirs = fresh.state_dict()
    for key, value in model.state_dict().items():
        expected = value.half().to(value.dtype) if value.is_floating_point() and not key.startswith(
            OMITTED_PREFIXES) else value
        assert torch.equal(theirs[key], expected), key


# ------------------------------------------------------------------------------------------ the shipped file
#: The targets the shipped model was built to meet (measured on synthetic_val: 97.9 % and AP50 98.5).
MIN_NAME_ACCURACY = 90.0
MIN_AP50 = 60.0


@pytest.fixture(scope="module")
def shipped_on_test(tmp_path_factory):
    """``train_net.py --eval-only`` of the shipped file on synthetic_test (held out: the recipe was chosen on
    synthetic_val, where the README's numbers come from)."""
    from tiny_trained import copypaste_blocks, run_train_net

    from glip_d2.embedded_model import WEIGHTS_FILE

    out = tmp_path_factory.mktemp("embedded_eval")
    log = run_train_net(["--config-file", CONFIG_FILE, "--eval-only", "MODEL.WEIGHTS", WEIGHTS_FILE,
                         "OUTPUT_DIR", str(out), "DATASETS.TEST", "('synthetic_test',)",
                         "DATASETS.SYNTHETIC.ROOT", str(out / "synthetic"), "DATASETS.SYNTHETIC.NUM_TRAIN", "1",
                         "DATASETS.SYNTHETIC.NUM_VAL", "1"], log_path=out / "eval.log")
    bbox = copypaste_blocks(log)[-1]
    names = re.findall(r"Name accuracy on synthetic_test: (.*)", log)[-1]
    return bbox, {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", names)}, log


def test_shipped_file_is_small_and_loads_without_warnings(shipped_on_test):
    import os

    from glip_d2.embedded_model import WEIGHTS_FILE

    assert os.path.getsize(WEIGHTS_FILE) <= 10 * 2**20
    _, _, log = shipped_on_test
    assert "not in the file by design" in log and "not found in the checkpoint" not in log


@pytest.mark.slow
def test_shipped_model_names_held_out_objects(shipped_on_test):
    bbox, names, _ = shipped_on_test
    assert names["name_accuracy"] >= MIN_NAME_ACCURACY, names
    assert bbox["AP50"] >= MIN_AP50, bbox


@pytest.mark.slow
def test_make_demo_picture_boxes_every_object_with_its_own_name(tmp_path, monkeypatch):
    """make demo without GLIP-T: the embedded model, no training; in its picture every object has a box (IoU >= 0.5)
    with its own full name, and nothing else is drawn."""
    import os
    import sys

    import cv2
    from tiny_trained import REPO, iou_xyxy

    from glip_d2.embedded_model import embedded_cfg
    from glip_d2.engine.best_phrase import keep_best_phrase_per_region
    from glip_d2.engine.predictor import GLIPPredictor

    sys.path.insert(0, os.path.join(REPO, "demo"))
    import make_demo

    monkeypatch.setattr(make_demo, "cached_glip_t", lambda: None)
    monkeypatch.setattr(make_demo, "ensure_tiny_model", lambda *a, **k: pytest.fail("make demo trained a model"))
    monkeypatch.chdir(REPO)
    root = str(tmp_path / "synthetic")
    written = make_demo.main(["--output", str(tmp_path / "demo.png"), "--dataset-root", root])
    assert cv2.imread(written) is not None

    record = make_demo.synthetic_sample(root)
    instances = GLIPPredictor(embedded_cfg())(cv2.imread(record["file_name"]), make_demo.tiny_prompt(record))
    instances = keep_best_phrase_per_region(instances, make_demo.EMBEDDED_AGNOSTIC_NMS)
    drawn = instances[instances.scores >= make_demo.EMBEDDED_THRESHOLD]
    from glip_d2.data.datasets import SYNTHETIC_CATEGORY_NAMES

    truth = [(SYNTHETIC_CATEGORY_NAMES[a["category_id"]], a["bbox"]) for a in record["annotations"]]
    assert len(drawn) == len(truth), (list(drawn.pred_phrases), truth)
    for name, (x, y, w, h) in truth:
        assert any(p == name and iou_xyxy(b, [x, y, x + w, y + h]) >= 0.5
                   for p, b in zip(drawn.pred_phrases, drawn.pred_boxes.tensor.tolist())), (name, list(drawn.pred_phrases))


def test_make_demo_on_your_own_picture(tmp_path, monkeypatch, capsys):
    """make demo IMAGE=... PROMPT=...: the user's picture through the embedded model, which the log names."""
    import os
    import sys

    import cv2
    import numpy as np
    from tiny_trained import REPO

    from glip_d2.data.datasets.synthetic import render_sample

    sys.path.insert(0, os.path.join(REPO, "demo"))
    import make_demo

    monkeypatch.setattr(make_demo, "cached_glip_t", lambda: None)
    image, objects = render_sample(np.random.default_rng(21))
    cv2.imwrite(str(tmp_path / "mine.png"), image)
    monkeypatch.chdir(tmp_path)  # a relative IMAGE is the user's, not the repository's
    written = make_demo.main(["--image", "mine.png", "--prompt", objects[0]["name"] + ".",
                              "--output", str(tmp_path / "out.png")])
    assert cv2.imread(written) is not None
    assert "the embedded model" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--image and --prompt together"):
        make_demo.main(["--image", "mine.png"])
