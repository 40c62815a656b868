"""demo/demo.py as a command: problems found before the model is built, one-line errors, honest exit codes."""
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo"))
import demo as demo_cli  # noqa: E402  (demo/demo.py)
from glip_d2.structures import PhraseList  # noqa: E402


class _FakePredictor:
    """Stands in for GLIPPredictor: one box per image, so the CLI's own logic is what is tested."""

    built = 0

    def __init__(self, cfg):
        type(self).built += 1

    def __call__(self, image, prompt, phrases=None):
        inst = Instances(image.shape[:2])
        inst.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 6.0, 6.0]]))
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.tensor([0])
        inst.pred_phrases = PhraseList(["cat"])
        return inst


@pytest.fixture()
def fake_model(monkeypatch):
    _FakePredictor.built = 0
    monkeypatch.setattr(demo_cli, "GLIPPredictor", _FakePredictor)
    monkeypatch.setattr(demo_cli, "setup_cfg", lambda args: None)
    return _FakePredictor


def _images(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.full((8, 8, 3), 128, np.uint8))
    return folder


def test_a_folder_expands_to_its_images(tmp_path, fake_model):
    photos = _images(tmp_path / "photos", ["b.jpg", "a.png"])
    (photos / "notes.txt").write_text("not an image")
    written = demo_cli.main(["--input", str(photos), "--prompt", "cat", "--output", str(tmp_path / "out")])
    assert written == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "b.png")]
    assert all(os.path.isfile(w) for w in written)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="folder without images"):
        demo_cli.main(["--input", str(empty), "--prompt", "cat"])


@pytest.mark.parametrize("value", ["1.5", "nan", "-0.1"])
def test_bad_threshold_is_an_error_before_the_model(tmp_path, fake_model, value):
    photos = _images(tmp_path / "photos", ["a.png"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        demo_cli.main(["--input", str(photos), "--prompt", "cat", "--confidence-threshold", value])
    assert fake_model.built == 0


def test_missing_input_and_unwritable_output_fail_before_the_model(tmp_path, fake_model):
    with pytest.raises(FileNotFoundError, match="no such file"):
        demo_cli.main(["--input", str(tmp_path / "nope.jpg"), "--prompt", "cat"])
    photos = _images(tmp_path / "photos", ["a.png"])
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match="output folder"):
        demo_cli.main(["--input", str(photos / "a.png"), "--prompt", "cat", "--output", str(blocker / "x.png")])
    with pytest.raises(ValueError, match="png or .jpg"):
        demo_cli.main(["--input", str(photos / "a.png"), "--prompt", "cat", "--output", str(tmp_path / "x.gif")])
    assert fake_model.built == 0


def test_skip_bad_images_goes_on_and_exits_nonzero(tmp_path, fake_model, capsys):
    photos = _images(tmp_path / "photos", ["a.png", "c.png"])
    (photos / "b.png").write_text("broken")
    args = ["--input", str(photos / "*.png"), "--prompt", "cat", "--output", str(tmp_path / "out")]
    assert demo_cli.cli(args) == 1  # stops at the broken picture: one line, no traceback
    err = capsys.readouterr().err
    assert "demo.py: error: cannot read image" in err and "b.png" in err and "Traceback" not in err
    assert demo_cli.cli(args + ["--skip-bad-images"]) == 1  # the later picture is drawn, the broken one listed
    captured = capsys.readouterr()
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    assert "1 image(s) skipped" in captured.err and "b.png" in captured.err
    assert demo_cli.cli(["--input", str(photos / "a.png"), "--prompt", "cat",
                         "--output", str(tmp_path / "one.png")]) == 0
