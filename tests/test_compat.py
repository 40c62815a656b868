"""glip_d2.compat: checks that name the fix instead of patching, and the np.float alias scoped to LVIS evaluation."""
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from glip_d2 import compat
from glip_d2.evaluation import build_evaluator
from glip_d2.evaluation.lvis_evaluation import LVISEvaluator

NUMPY_HAS_FLOAT = "float" in np.__dict__  # NumPy < 1.24


# ------------------------------------------------------------------------------------------- np.float alias
@pytest.mark.skipif(NUMPY_HAS_FLOAT, reason="this NumPy still has np.float")
def test_numpy_float_alias_exists_only_inside_the_block():
    assert not hasattr(np, "float")
    with compat.numpy_float_alias():
        assert np.float is float
        with compat.numpy_float_alias():  # nested: the inner block must not remove the outer one's alias
            pass
        assert np.float is float
    assert not hasattr(np, "float")
    with pytest.raises(KeyError), compat.numpy_float_alias():
        {}["missing"]
    assert not hasattr(np, "float")


@pytest.mark.skipif(not NUMPY_HAS_FLOAT, reason="this NumPy has no np.float")
def test_numpy_float_alias_leaves_an_existing_one():
    original = np.float
    with compat.numpy_float_alias():
        pass
    assert np.float is original


def _tiny_lvis(tmp_path):
    """One image, one 'dog' box, LVIS-format json registered as an 'lvis' dataset."""
    cats = [{"id": i, "name": n, "synonyms": [n], "frequency": "f", "image_count": 1, "instance_count": 1}
            for i, n in ((1, "cat"), (2, "dog"))]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100, "neg_category_ids": [],
                    "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 10.0, 30.0, 40.0], "area": 1200.0,
                         "segmentation": [[10.0, 10.0, 40.0, 10.0, 40.0, 50.0, 10.0, 50.0]]}],
        "categories": cats,
    }
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    name = f"compat_lvis_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(json_file=str(path), evaluator_type="lvis", thing_classes=["cat", "dog"])
    return name


def test_lvis_evaluator_scores_a_tiny_set_and_leaves_numpy_alone(tmp_path):
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config

    name = _tiny_lvis(tmp_path)
    evaluator = build_evaluator(add_glip_config(get_cfg()), name)
    assert type(evaluator) is LVISEvaluator
    evaluator.reset()
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.tensor([1])  # contiguous 1 -> LVIS id 2 ("dog")
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    had_float = hasattr(np, "float")
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert hasattr(np, "float") == had_float


# ------------------------------------------------------------------------------ checks instead of patches
def test_installed_detectron2_passes_the_checks():
    compat.check_detectron2_importable()
    assert compat.launch_supports_cpu()  # patched v0.6 or upstream
    compat.check_launch(2)


def test_multi_process_cpu_launch_on_an_unpatched_detectron2_says_what_to_do(monkeypatch):
    monkeypatch.setattr(compat, "launch_supports_cpu", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    compat.check_launch(1)  # one process never goes through the worker
    with pytest.raises(RuntimeError, match="install_env.sh"):
        compat.check_launch(2)


def test_unimportable_detectron2_names_the_fix(tmp_path):
    """A detectron2 v0.6 built without C++ ops and not patched: `import glip_d2` says how to fix it."""
    fake = tmp_path / "detectron2"
    (fake / "layers").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "layers" / "__init__.py").write_text("from detectron2 import _C\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", "import glip_d2"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: detectron2 is installed without its C++ ops") and "install_env.sh" in last


@pytest.mark.skipif(compat.detectron2_has_c_ops(), reason="detectron2 has its compiled ops here")
def test_missing_c_op_fails_when_used_and_names_itself():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match="box_iou_rotated.*Build detectron2"):
        pairwise_iou_rotated(boxes, boxes)
