"""``import glip_d2`` leaves NumPy, Pillow, torch and detectron2 as it found them, and the installed detectron2
works without glip_d2, multi-process CPU launch included. Each check runs in a fresh interpreter: this test
process has imported glip_d2 already (conftest)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

PROBE = textwrap.dedent(
    """
    import importlib, json, sys, types
    import numpy as np, PIL.Image, torch
    from torch import nn
    import detectron2.data.transforms, detectron2.engine, detectron2.evaluation, detectron2.modeling

    launch_module = importlib.import_module("detectron2.engine.launch")
    WATCHED = [np, PIL.Image, torch, torch.nn.modules.module, launch_module, detectron2.data.transforms.transform,
               importlib.import_module("detectron2.layers.deform_conv")]

    def state():
        return {
            "hasattr(np, 'float')": hasattr(np, "float"),
            "hasattr(PIL.Image, 'LINEAR')": hasattr(PIL.Image, "LINEAR"),
            "'detectron2._C' in sys.modules": "detectron2._C" in sys.modules,
            "nn.Module.register_parameter": id(nn.Module.register_parameter),
            "nn.Module.register_buffer": id(nn.Module.register_buffer),
            "launch._distributed_worker": id(launch_module._distributed_worker),
            "detectron2.engine.launch": id(detectron2.engine.launch),
            "torch default dtype": str(torch.get_default_dtype()),
            "torch default device": str(torch.get_default_device()),
            "torch grad enabled": torch.is_grad_enabled(),
            # every non-module attribute of the watched modules and of nn.Module, by identity
            "attributes": {
                f"{m.__name__}.{k}": id(v)
                for m in WATCHED + [nn.Module]
                for k, v in list(vars(m).items())
                if not isinstance(v, types.ModuleType)
            },
        }

    before = state()
    import glip_d2  # noqa: F401
    after = state()
    print(json.dumps({"before": before, "after": after}))
    """
)

STANDALONE = textwrap.dedent(
    """
    import sys
    from detectron2.config import get_cfg
    import detectron2.layers, detectron2.modeling
    from detectron2.data import transforms as T
    from detectron2.evaluation import COCOEvaluator, LVISEvaluator
    from PIL import Image

    cfg = get_cfg()
    assert T.ExtentTransform.__init__.__defaults__[0] == Image.BILINEAR
    assert "glip_d2" not in sys.modules
    print("standalone ok")
    """
)

LAUNCH = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from detectron2.engine import launch
    from detectron2.utils import comm


    def main(out):
        t = torch.tensor([comm.get_rank() + 1.0])
        dist.all_reduce(t)
        if comm.is_main_process():
            with open(out, "w") as f:
                json.dump({"world": comm.get_world_size(), "sum": t.item(), "backend": dist.get_backend(),
                           "local": comm.get_local_size()}, f)
        comm.synchronize()
        dist.destroy_process_group()  # a clean exit: gloo aborts ("terminate called") if torn down mid-collective


    if __name__ == "__main__":
        launch(main, 2, dist_url="auto", args=(sys.argv[1],))
        assert "glip_d2" not in sys.modules
    """
)


def _run(code, *args, env=None, timeout=300):
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                         env=env or os.environ.copy())
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_import_glip_d2_changes_nothing():
    report = json.loads(_run(PROBE).strip().splitlines()[-1])
    before, after = report["before"], report["after"]
    attrs_before, attrs_after = before.pop("attributes"), after.pop("attributes")
    assert after == before
    changed = sorted(k for k in set(attrs_before) | set(attrs_after) if attrs_before.get(k) != attrs_after.get(k))
    assert not changed, f"import glip_d2 added, removed or replaced: {changed}"


def test_detectron2_imports_without_glip_d2():
    assert "standalone ok" in _run(STANDALONE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path of launch")
def test_two_process_cpu_launch_through_detectron2(tmp_path):
    script = tmp_path / "launch_two.py"
    script.write_text(LAUNCH)
    out = tmp_path / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(out.read_text()) == {"world": 2, "sum": 3.0, "backend": "gloo", "local": 2}
