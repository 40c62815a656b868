"""detectron2 compatibility shims: importable without _C, clear error when a C op is used, gloo launch on CPU."""
import importlib
import sys

import pytest

import glip_d2  # noqa: F401  (installs the shims)
from glip_d2 import compat


def test_detectron2_modules_import():
    import detectron2.layers  # noqa: F401
    import detectron2.modeling  # noqa: F401
    from detectron2.evaluation import COCOEvaluator, LVISEvaluator  # noqa: F401


@pytest.mark.skipif(compat.HAS_D2_C_OPS, reason="detectron2 has its compiled ops here")
def test_missing_c_op_names_itself():
    c_module = sys.modules["detectron2._C"]
    with pytest.raises(RuntimeError, match="nms_rotated"):
        getattr(c_module, "nms_rotated")  # noqa: B009  (attribute access is the behaviour under test)


def test_launch_worker_supports_cpu():
    launch_module = importlib.import_module("detectron2.engine.launch")
    import inspect

    assert "GLOO" in inspect.getsource(launch_module._distributed_worker).upper()


def test_lvis_eval_numpy_alias():
    import numpy as np

    assert np.float is float or "float" in np.__dict__


def test_pillow_linear_available():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
