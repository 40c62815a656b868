"""What glip_d2 needs from its environment, checked rather than patched: importing glip_d2 changes nothing in
NumPy, Pillow, torch or detectron2.

tools/install_env.sh installs a detectron2 that works on its own: upstream from git, or v0.6 (pb1-detectron2)
with its sources patched by tools/patch_detectron2_v06.py. A detectron2 the user brings (DETECTRON2=skip) may be
an unpatched v0.6; the checks here turn its failures into errors that name the fix. The one shim left,
``numpy_float_alias``, is scoped to LVIS evaluation.
"""
import contextlib
import importlib
import importlib.util
import inspect

__all__ = [
    "DETECTRON2_FIX",
    "check_detectron2_importable",
    "check_launch",
    "detectron2_has_c_ops",
    "launch_supports_cpu",
    "numpy_float_alias",
]

DETECTRON2_FIX = (
    "run tools/install_env.sh (its default DETECTRON2=pb1 installs detectron2 v0.6 patched to work without C++ ops "
    "and on CPU), or build detectron2 from source (pip install 'git+https://github.com/facebookresearch/detectron2.git')"
)


def detectron2_has_c_ops() -> bool:
    """True when detectron2 was compiled with its C++/CUDA ops (rotated boxes, COCOeval_opt, ...)."""
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def check_detectron2_importable() -> None:
    """Import the detectron2 modules glip_d2 builds on; raise an ImportError naming the fix if they do not import.

    An unpatched detectron2 v0.6 without its compiled ops fails at ``from detectron2 import _C`` (module top of
    detectron2.layers), and with Pillow >= 10 at ``Image.LINEAR`` (detectron2.data.transforms).
    """
    try:
        importlib.import_module("detectron2.layers")
        importlib.import_module("detectron2.data.transforms")
        importlib.import_module("detectron2.evaluation")
    except ImportError as e:
        if "_C" not in str(e):
            raise
        raise ImportError(f"detectron2 is installed without its C++ ops and cannot import them ({e}): "
                          f"{DETECTRON2_FIX}") from e
    except AttributeError as e:
        if "LINEAR" not in str(e):
            raise
        raise ImportError(f"this detectron2 needs Pillow < 10 ({e}): {DETECTRON2_FIX}") from e


def launch_supports_cpu() -> bool:
    """Whether detectron2's ``launch`` can start several processes without CUDA (gloo), as upstream's does."""
    launch_module = importlib.import_module("detectron2.engine.launch")  # the module; the package exports the function
    return "GLOO" in inspect.getsource(launch_module._distributed_worker).upper()


def check_launch(num_processes_per_machine: int) -> None:
    """Raise before spawning if detectron2's ``launch`` would fail in its workers: several processes without
    CUDA on an unpatched detectron2 v0.6 (it asserts CUDA and hard-codes NCCL)."""
    import torch

    if num_processes_per_machine > 1 and not torch.cuda.is_available() and not launch_supports_cpu():
        raise RuntimeError(
            f"{num_processes_per_machine} processes without CUDA need a detectron2 whose launch uses gloo on CPU; "
            f"this one only supports NCCL on GPUs. Use one process, or {DETECTRON2_FIX}."
        )


@contextlib.contextmanager
def numpy_float_alias():
    """``np.float`` (= ``float``) inside the block only, for lvis 0.5.3's evaluation (the latest release calls it;
    NumPy 1.24 removed it, and opencv wheels for Python 3.11 need NumPy 2). Removed again on exit; a NumPy that
    still has it is left alone."""
    import numpy as np

    added = "float" not in np.__dict__
    if added:
        np.float = float
    try:
        yield
    finally:
        if added and np.__dict__.get("float") is float:
            del np.float
