"""Image files checked at load time: every file must exist and be non-empty; a small random sample is decoded.

A missing file otherwise surfaces only when the sampler first draws it (possibly hours into training). Decoding
every image of a large set takes as long as an epoch of data loading, so only ``decode_sample`` images are
decoded (unreadable files, width/height that differ from the record); the rest are checked with one ``stat``.
"""
import os
import random
from concurrent.futures import ThreadPoolExecutor

from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager

__all__ = ["check_image_files"]

#: Files stat-ed per thread task; threads hide network-filesystem latency on large sets.
_CHUNK = 1024
_THREADS = 16


def _file_state(file_name) -> str | None:
    """None when the file is usable, else the problem kind."""
    if not file_name:
        return "missing_image"
    file_name = os.fspath(file_name)
    if "://" in file_name:  # a PathManager URL: existence is all that can be asked cheaply
        return None if PathManager.exists(file_name) else "missing_image"
    try:
        size = os.stat(file_name).st_size
    except OSError:
        return "missing_image"
    return None if size > 0 else "empty_image"


def _states(files: list) -> list:
    if len(files) <= _CHUNK:
        return [_file_state(f) for f in files]
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        return [s for chunk in pool.map(lambda c: [_file_state(f) for f in c], chunks) for s in chunk]


def _decode_problem(record: dict, image_format: str) -> tuple[str, str] | None:
    try:
        image = utils.read_image(record["file_name"], format=image_format)
    except Exception as e:  # PIL raises several types for broken files
        return "unreadable_image", f"{type(e).__name__}: {e}"
    got = (image.shape[1], image.shape[0])
    expected = (record.get("width", got[0]), record.get("height", got[1]))
    if got != expected:
        return "image_size_mismatch", f"decoded width x height {got[0]}x{got[1]}, record says {expected[0]}x{expected[1]}"
    return None


def check_image_files(
    dataset_dicts: list, *, decode_sample: int = 16, image_format: str = "BGR", seed: int = 0
) -> tuple[dict, int, int]:
    """Problems of each record's image file.

    Returns ({record index: (kind, detail)}, number of files checked, number decoded). Records sharing a file
    (several captions of one image) share its state; the sample is drawn among usable files with ``seed``.
    """
    files = list(dict.fromkeys(d.get("file_name") for d in dataset_dicts))
    state = dict(zip(files, _states(files)))
    problems = {i: (state[d.get("file_name")], "") for i, d in enumerate(dataset_dicts) if state[d.get("file_name")]}
    first_record = {}
    for i, d in enumerate(dataset_dicts):
        if i not in problems:
            first_record.setdefault(d.get("file_name"), i)
    sample = sorted(random.Random(seed).sample(sorted(first_record.values()), min(decode_sample, len(first_record))))
    decoded_bad = {}
    for i in sample:
        found = _decode_problem(dataset_dicts[i], image_format)
        if found:
            decoded_bad[dataset_dicts[i].get("file_name")] = found
    for i, d in enumerate(dataset_dicts):
        if d.get("file_name") in decoded_bad:
            problems[i] = decoded_bad[d.get("file_name")]
    return problems, len(files), len(sample)
