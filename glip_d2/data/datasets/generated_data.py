"""Data generated on first use: regenerate when the recorded parameters change, record them last.

Why a manifest written last: an interrupted generation leaves no manifest, so the next run regenerates instead of
reading half-written files; a run with other parameters (seed, sizes, generator version) regenerates too. In
distributed runs only the main process writes, the others wait at a barrier.
"""
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable

import cv2
import numpy as np
from detectron2.utils import comm

__all__ = ["JPEG_QUALITY", "begin_generation", "ensure_generated", "finish_generation", "write_jpeg"]

logger = logging.getLogger(__name__)

_MANIFEST = "manifest.json"
#: JPEG quality of every generated picture (high enough that colours and edges survive).
JPEG_QUALITY = 92


def write_jpeg(image_dir: str, image_id: int, img: np.ndarray) -> dict:
    """Write a rendered picture as ``{image_id:06d}.jpg`` under ``image_dir``; returns its COCO image entry (id,
    file_name, height, width)."""
    file_name = f"{image_id:06d}.jpg"
    path = os.path.join(image_dir, file_name)
    if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")
    return {"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}


def begin_generation(root: str) -> None:
    """Drop the manifest first (the data is stale from now on) and the old images; create ``root``."""
    manifest_file = os.path.join(root, _MANIFEST)
    if os.path.exists(manifest_file):
        os.remove(manifest_file)
    shutil.rmtree(os.path.join(root, "images"), ignore_errors=True)
    os.makedirs(root, exist_ok=True)


def finish_generation(root: str, manifest: dict) -> None:
    """Write the manifest atomically: the data under ``root`` is complete."""
    manifest_file = os.path.join(root, _MANIFEST)
    with open(manifest_file + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(manifest_file + ".tmp", manifest_file)


def ensure_generated(root: str, manifest: dict, files: Iterable[str], generate: Callable[[], object],
                     what: str) -> None:
    """Run ``generate`` on the main process unless ``root`` holds ``manifest`` and every one of ``files``; then
    synchronise the processes."""
    if comm.is_main_process():
        try:
            with open(os.path.join(root, _MANIFEST)) as f:
                current = json.load(f)
        except (OSError, ValueError):
            current = None
        if current != manifest or not all(os.path.exists(p) for p in files):
            logger.info("Generating %s in %s (%s)", what, root, manifest)
            generate()
    comm.synchronize()
