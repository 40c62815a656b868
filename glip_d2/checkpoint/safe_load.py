"""Read checkpoint files without ever executing code from them.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; we extend its allow-list with the
few data-only types that real checkpoints contain (numpy arrays/scalars, ``collections.Counter``) and turn
torch's low-level failures into errors that name the file and say what is wrong: a file whose pickle would import
a callable is refused (``UnsafeCheckpointError``), a truncated or foreign file is reported as such
(``CorruptCheckpointError``). detectron2-style ``.pkl`` files are read by a restricted unpickler that accepts
numpy arrays and nothing callable.
"""
import collections
import hashlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from typing import Any

import torch

from .errors import CorruptCheckpointError, UnsafeCheckpointError

__all__ = ["load_checkpoint_file", "sha256_of_file", "safe_globals_list"]

_UNSAFE_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _numpy_globals() -> list[Any]:
    """numpy constructors that only rebuild arrays/scalars (under both numpy 1.x and 2.x module names)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a torch dependency in practice
        return []
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    out: list[Any] = [np.ndarray, np.dtype]
    for core in ("numpy.core", "numpy._core"):
        out.append((multiarray._reconstruct, f"{core}.multiarray._reconstruct"))
        out.append((multiarray.scalar, f"{core}.multiarray.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out.extend(getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType"))
    return out


def safe_globals_list() -> list[Any]:
    """Everything allowed on top of torch's weights-only defaults: data containers only, nothing callable."""
    return [collections.Counter, collections.OrderedDict] + _numpy_globals()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for Detectron-style ``.pkl`` weights: dicts of numpy arrays; any other global is refused."""

    def __init__(self, f, path):
        super().__init__(f, encoding="latin1")
        self._path = path
        self._allowed = {}
        for item in safe_globals_list():
            obj, name = item if isinstance(item, tuple) else (item, f"{item.__module__}.{item.__qualname__}")
            self._allowed[name] = obj

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in self._allowed:
            return self._allowed[full]
        raise UnsafeCheckpointError(_unsafe_message(self._path, [full]))


def _unsafe_message(path: str, names: list[str]) -> str:
    return (
        f"Refusing to load {path}: its pickle references {', '.join(sorted(set(names)))}, which loading would "
        "import and call, so the file could execute arbitrary code. glip_d2 reads checkpoints with "
        "torch.load(weights_only=True), which accepts tensors and plain containers only. If you made this file "
        "yourself and trust it, re-save just its weights: torch.save({'model': model.state_dict()}, path)."
    )


def _error_detail(exc: BaseException) -> str:
    """torch's reason without its advice to retry with ``weights_only=False`` (never the fix for a bad file)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and "weights_only" not in line]
    return (lines or [""])[0][:200]


def _corrupt_message(path: str, exc: BaseException) -> str:
    size = os.path.getsize(path)
    detail = _error_detail(exc)
    what = "is empty" if size == 0 else (
        f"({size} bytes) is not a readable PyTorch checkpoint: it is truncated, corrupted or not a checkpoint"
    )
    return (
        f"Cannot read {path}: the file {what} ({type(exc).__name__}: {detail}). "
        "If it was downloaded, delete it and download it again."
    )


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if not os.path.isfile(path):
        raise IsADirectoryError(f"Checkpoint path is not a file: {path}")


def load_checkpoint_file(path: str, *, mmap: bool = False) -> Any:
    """Load a ``.pth``/``.pt`` (weights-only) or ``.pkl`` (numpy-only) checkpoint onto the CPU.

    ``mmap``: map the tensors' storage from the file instead of reading it (torch's zip format; other files are
    read whole), so looking at the keys of a multi-GB checkpoint costs only its small pickle.
    Raises ``UnsafeCheckpointError`` when the file would execute code, ``CorruptCheckpointError`` when it cannot
    be parsed, ``FileNotFoundError`` when it does not exist. Never runs code stored in the file.
    """
    path = os.fspath(path)
    _check_exists(path)
    if path.endswith(".pkl"):
        return _load_pkl(path)
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(safe_globals_list()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        if names:
            raise UnsafeCheckpointError(_unsafe_message(path, names)) from None
        raise CorruptCheckpointError(_corrupt_message(path, e)) from None
    except MemoryError:
        raise
    except Exception as e:  # torch reports damaged files as RuntimeError/OSError/EOFError/KeyError/...
        raise CorruptCheckpointError(_corrupt_message(path, e)) from None


def _unsafe_globals(path: str, exc: BaseException) -> list[str]:
    """The globals torch refused: scanned from the zip's pickle, else parsed from torch's message."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not torch's zip format: read the plain pickle's opcodes
        names = [n for n in _plain_pickle_globals(path) if not n.startswith("torch.")]
    allowed = set()
    for item in safe_globals_list():
        allowed.add(item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}")
    names = [n for n in names if n not in allowed]
    return names or _UNSAFE_GLOBAL_RE.findall(str(exc))


def _plain_pickle_globals(path: str) -> list[str]:
    """Callables a plain (non-zip) pickle would import, read from its opcodes without running anything."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # a damaged stream: what was read before the damage
        pass
    return names


def _load_pkl(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(io.BufferedReader(f), path).load()
    except UnsafeCheckpointError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise CorruptCheckpointError(_corrupt_message(path, e)) from None


def sha256_of_file(path: str, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
