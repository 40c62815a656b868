#!/usr/bin/env python
"""Patch the detectron2 v0.6 sources of pb1-detectron2 so the installed package works on its own.

pb1-detectron2 ships v0.6's Python sources without the C++ sources, so tools/install_env.sh builds it with no
extension. Unpatched, ``import detectron2.layers`` then fails (v0.6 imports ``_C`` at module top), Pillow 10 and
NumPy 1.24 broke names it uses, and multi-process ``launch`` asserts CUDA. Each patch below swaps exact v0.6 text
for what current upstream detectron2 does, so code written for either version behaves the same.

    python tools/patch_detectron2_v06.py SDIST_DIR      # patch the unpacked sdist (the installer does this)
    python tools/patch_detectron2_v06.py --check-installed   # exit 1 if the importable pb1 detectron2 is unpatched

A file holding neither the v0.6 text nor the patched text stops with an error (the sdist is not the one these
patches were written for). Running it again on a patched tree changes nothing.
"""
import argparse
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from typing import NamedTuple

_C_FALLBACK = (
    "\ntry:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # built without C++ ops: importing works, calling an op raises a clear error\n"
    "    from detectron2.utils.missing_c_ops import _C\n"
)

MISSING_C_OPS = '''"""Stand-in for ``detectron2._C`` when detectron2 was installed without its C++ extension.

Added by glip_d2's tools/patch_detectron2_v06.py: v0.6 imports ``_C`` at module top, so without this stand-in
``import detectron2.layers`` fails although only a few ops (rotated boxes, detectron2's own deformable conv,
COCOeval_opt) need the extension.
"""


class _MissingCOps:
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2 was installed without its C++ ops, so 'detectron2._C.{name}' is unavailable. "
            "Build detectron2 from source to use it (COCOEvaluator works with use_fast_impl=False)."
        )


_C = _MissingCOps()
'''


class Patch(NamedTuple):
    path: str  # relative to the sdist root
    old: str  # exact v0.6 text
    new: str
    count: int = 1  # occurrences of ``old`` in v0.6
    installed: bool = True  # False: build-time only (setup.py), not in the installed package


PATCHES = [
    # setup.py would compile C++ sources the sdist does not have.
    Patch("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],", installed=False),
    # `from detectron2 import _C` at module top: importable without the extension, errors only when an op is used.
    *[
        Patch(f"detectron2/{f}", "\nfrom detectron2 import _C\n", _C_FALLBACK)
        for f in ("layers/deform_conv.py", "layers/roi_align_rotated.py", "layers/rotated_boxes.py",
                  "evaluation/fast_eval_api.py")
    ],
    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR); v0.6 evaluates it as a default argument at import.
    Patch("detectron2/data/transforms/transform.py", "interp=Image.LINEAR,", "interp=Image.BILINEAR,"),
    # launch: gloo without GPUs, as upstream (v0.6 asserts CUDA and hard-codes NCCL).
    Patch(
        "detectron2/engine/launch.py",
        '\n    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n',
        "\n    has_gpu = torch.cuda.is_available()\n"
        "    if has_gpu:\n"
        "        assert num_gpus_per_machine <= torch.cuda.device_count()\n",
    ),
    Patch("detectron2/engine/launch.py", '\n            backend="NCCL",\n',
          '\n            backend="NCCL" if has_gpu else "GLOO",\n'),
    Patch(
        "detectron2/engine/launch.py",
        "\n    assert num_gpus_per_machine <= torch.cuda.device_count()\n    torch.cuda.set_device(local_rank)\n",
        "\n    if has_gpu:\n        torch.cuda.set_device(local_rank)\n",
    ),
    # NumPy 1.24 removed np.bool/np.int/np.float/np.str (upstream uses the builtins).
    Patch("detectron2/data/build.py", "dtype=np.int)", "dtype=int)"),
    Patch("detectron2/data/build.py", "dtype=np.int\n", "dtype=int\n"),
    Patch("detectron2/data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)"),
    Patch("detectron2/evaluation/pascal_voc_evaluation.py", ".astype(np.bool)", ".astype(bool)", count=2),
    Patch("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.int)", "dtype=int)", count=2),
    Patch("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.float)", "dtype=float)", count=2),
    Patch("detectron2/evaluation/sem_seg_evaluation.py", ".astype(np.float)", ".astype(float)", count=3),
    Patch("detectron2/structures/masks.py", ".astype(np.bool)", ".astype(bool)", count=2),
    Patch("detectron2/structures/masks.py", "dtype=np.bool)", "dtype=bool)"),
    Patch("detectron2/utils/visualizer.py", ".astype(np.bool)", ".astype(bool)", count=3),
    Patch("detectron2/utils/video_visualizer.py", "dtype=np.bool)", "dtype=bool)"),
]

#: files the patches add: path -> content
NEW_FILES = {"detectron2/utils/missing_c_ops.py": MISSING_C_OPS}

_REMOVED_NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?!_)")


class UnexpectedSource(RuntimeError):
    pass


def _state(text: str, patch: Patch) -> str:
    """"original", "patched" or "unknown" for one patch on one file's text."""
    n_old = text.count(patch.old)
    if n_old == patch.count:
        return "original"
    if n_old == 0 and text.count(patch.new) >= patch.count:
        return "patched"
    return "unknown"


def patch_tree(root: Path) -> list:
    """Apply every patch under ``root`` (an unpacked sdist); return a line per change. Raises UnexpectedSource."""
    changes = []
    for patch in PATCHES:
        assert patch.old not in patch.new, patch
        file = root / patch.path
        if not file.is_file():
            raise UnexpectedSource(f"{patch.path}: missing")
        text = file.read_text()
        state = _state(text, patch)
        if state == "unknown":
            raise UnexpectedSource(f"{patch.path}: expected {patch.count}x {patch.old!r} (v0.6) or {patch.new!r}")
        if state == "original":
            file.write_text(text.replace(patch.old, patch.new))
            changes.append(f"{patch.path}: {patch.old.strip()!r} -> {patch.new.strip()!r}")
    for rel, content in NEW_FILES.items():
        file = root / rel
        if not file.is_file() or file.read_text() != content:
            file.write_text(content)
            changes.append(f"{rel}: added")
    leftovers = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted((root / "detectron2").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if _REMOVED_NUMPY_ALIAS.search(line.split("#")[0])
    ]
    if leftovers:
        raise UnexpectedSource(f"NumPy aliases removed in 1.24 still used at {', '.join(leftovers)}")
    return changes


def installed_state() -> list:
    """Problems of the importable detectron2 if it is pb1-detectron2 without these patches ([] otherwise)."""
    try:
        importlib.metadata.version("pb1-detectron2")
    except importlib.metadata.PackageNotFoundError:
        return []  # upstream or another build: not ours to judge
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0]).parent
    problems = {}
    for patch in PATCHES:
        file = root / patch.path
        if patch.installed and (not file.is_file() or _state(file.read_text(), patch) != "patched"):
            problems[f"{patch.path}: not patched"] = None
    problems.update({f"{rel}: missing": None for rel in NEW_FILES if not (root / rel).is_file()})
    return list(problems)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("sdist", nargs="?", type=Path, help="unpacked pb1-detectron2-0.6 directory")
    group.add_argument("--check-installed", action="store_true", help="exit 1 if the installed pb1 is unpatched")
    args = parser.parse_args(argv)
    if args.check_installed:
        problems = installed_state()
        if problems:
            print(f"[patch_detectron2_v06] installed pb1-detectron2: {'; '.join(problems)}", file=sys.stderr)
        return 1 if problems else 0
    try:
        changes = patch_tree(args.sdist)
    except UnexpectedSource as e:
        print(f"[patch_detectron2_v06] unexpected pb1-detectron2 sources: {e}", file=sys.stderr)
        return 2
    for c in changes:
        print(f"[patch_detectron2_v06] {c}")
    if not changes:
        print("[patch_detectron2_v06] already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
