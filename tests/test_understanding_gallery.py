"""tools/understanding_gallery.py: the README's VQA/captioning picture is drawn from its rows, and a missing
checkpoint is named with the command that makes it."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import understanding_gallery as gallery  # noqa: E402


def test_draws_one_panel_per_picture(tmp_path):
    rows = [{"image": np.full((60, 80, 3), 40 * i, dtype=np.uint8), "question": "what color is the star?",
             "answer": "red", "score": 0.8, "truth": "red" if i else "blue", "caption": "a picture of a red star"}
            for i in range(3)]
    out = tmp_path / "gallery.png"
    gallery.draw_gallery(rows, str(out))
    picture = np.asarray(Image.open(out).convert("L"))
    assert picture.shape[1] > picture.shape[0] * 2  # three panels side by side
    # each panel's picture is drawn: its grey level appears in the output
    for i in range(1, 3):
        assert (np.abs(picture.astype(int) - 40 * i) <= 1).sum() > 500


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_net.py --config-file .*glipv2_tiny_vqa_synthetic.yaml"):
        gallery.main(["--vqa-weights", str(tmp_path / "none.pth"), "--output", str(tmp_path / "g.png")])
