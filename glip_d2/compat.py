"""Compatibility shims so glip_d2 runs on both supported detectron2 flavours.

Supported: ``pb1-detectron2==0.6`` (upstream v0.6 Python sources, built without the C++ extension) and
current upstream detectron2 built from git. Every shim below says which version needs it and why, and
does nothing when it is not needed (a real ``detectron2._C``, a launcher that already knows gloo, ...).
``install()`` runs once, from ``glip_d2/__init__.py``, before any detectron2 module that needs it is imported.
"""
import importlib.util
import inspect
import logging
import sys
import types

__all__ = ["install", "HAS_D2_C_OPS"]

logger = logging.getLogger(__name__)

#: True when detectron2 was compiled with its C++/CUDA ops (only then may its fast COCOeval be used).
HAS_D2_C_OPS = False


class _MissingCOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: importing works, using an op raises an error that names the op."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2 was installed without its C++ ops, so 'detectron2._C.{name}' is unavailable. "
            "glip_d2 never needs it (deformable conv comes from torchvision, COCO evaluation uses "
            "pycocotools with use_fast_impl=False); if you call it directly, build detectron2 from source."
        )


def _stub_missing_c_extension() -> None:
    # detectron2 v0.6 imports `from detectron2 import _C` at module top in layers/deform_conv.py,
    # layers/roi_align_rotated.py, layers/rotated_boxes.py and evaluation/fast_eval_api.py, so without the
    # compiled extension `import detectron2.layers` fails. Upstream only needs _C when an op is called.
    global HAS_D2_C_OPS
    if "detectron2._C" in sys.modules:
        HAS_D2_C_OPS = not isinstance(sys.modules["detectron2._C"], _MissingCOps)
        return
    try:
        HAS_D2_C_OPS = importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        HAS_D2_C_OPS = False
    if HAS_D2_C_OPS:
        return
    import detectron2

    stub = _MissingCOps("detectron2._C")
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub


def _alias_removed_pillow_constants() -> None:
    # detectron2 v0.6 uses `Image.LINEAR` as a default argument (data/transforms/transform.py), evaluated at
    # import; Pillow 10 removed that alias of BILINEAR. Our installer pins pillow<10 for v0.6, this keeps
    # other environments importable.
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _alias_removed_numpy_float() -> None:
    # lvis 0.5.3 (the latest release, used by detectron2's LVISEvaluator) calls `np.float`, removed in
    # NumPy 1.24; opencv wheels for Python 3.11 require NumPy 2, so pinning NumPy is not an option.
    import numpy as np

    if "float" not in np.__dict__:
        np.float = float


def _distributed_worker_with_gloo(
    local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout=None
):
    """detectron2's worker, choosing NCCL with GPUs and gloo without (as upstream's does)."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    has_gpu = torch.cuda.is_available()
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(
        backend="NCCL" if has_gpu else "GLOO",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        **kwargs,
    )
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        pg = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    if has_gpu:
        assert num_gpus_per_machine <= torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)


def _let_launch_use_gloo_on_cpu() -> None:
    # detectron2 v0.6's engine/launch.py asserts CUDA and hard-codes the NCCL backend, so multi-process
    # training on CPU (our CI, laptops) is impossible; upstream picks GLOO without GPUs. The worker is
    # pickled by reference, and spawned children import glip_d2 (through the main function's module)
    # before running it, so they get the same worker.
    import importlib

    d2_launch = importlib.import_module("detectron2.engine.launch")  # the module, not the function
    source = inspect.getsource(d2_launch._distributed_worker)
    if "GLOO" in source.upper():
        return
    d2_launch._distributed_worker = _distributed_worker_with_gloo


_INSTALLED = False


def install() -> None:
    """Apply every needed shim once."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    _stub_missing_c_extension()
    _alias_removed_pillow_constants()
    _alias_removed_numpy_float()
    _let_launch_use_gloo_on_cpu()
