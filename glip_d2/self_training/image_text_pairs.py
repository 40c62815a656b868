"""Streaming readers of image–caption pairs, the input of pseudo-labelling.

Web caption corpora hold millions of rows, so ``.jsonl``, ``.csv`` and ``.tsv`` files are read row by row and never
held in memory. A COCO-captions ``.json`` is a single JSON document, so it is loaded whole; convert very large ones to
``.jsonl`` first.

Every valid pair gets ``index``, its 0-based ordinal among the *valid* pairs in file order. The shard writer groups
pairs by this index, so a rerun over the same file with the same ``on_bad_row`` assigns the same pair to the same
shard, which is what makes resuming and splitting the work across ranks deterministic.
"""
import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["CAPTION_KEYS", "IMAGE_KEYS", "LAYOUTS", "BadPairError", "ImageTextPair", "iter_image_text_pairs"]

logger = logging.getLogger(__name__)

#: Accepted names of the image column / key, in order of preference.
IMAGE_KEYS = ("image", "file_name", "image_path")
#: Accepted names of the caption column / key, in order of preference.
CAPTION_KEYS = ("caption", "text")
#: File extension -> what the file holds.
LAYOUTS = {
    ".jsonl": "one JSON object per line with an image key and a caption key",
    ".csv": "comma-separated values with a header row naming an image column and a caption column",
    ".tsv": "tab-separated values with a header row naming an image column and a caption column",
    ".json": "COCO captions: 'images' with 'id'/'file_name', 'annotations' with 'image_id'/'caption'",
}
#: Skipped rows logged one by one before the log goes quiet (a broken file would otherwise flood it).
_MAX_LOGGED_SKIPS = 10


@dataclass(frozen=True)
class ImageTextPair:
    """One image and one caption; ``where`` (``"pairs.jsonl:12"``) points back at the source row for messages."""

    index: int
    image: str
    caption: str
    where: str


class BadPairError(ValueError):
    """A row that is not a usable pair; the message names the file, the line/row and the reason."""


def _bad(where: str, path: str, reason: str) -> BadPairError:
    return BadPairError(f"{where}: {reason} (file {path})")


def _pick(row: dict, keys: Sequence[str]):
    return next((row[k] for k in keys if row.get(k) is not None), None)


def _image_and_caption(row, where: str, path: str) -> tuple[str, str]:
    """The checked ``(image, caption)`` of a parsed row; raises :class:`BadPairError` with the reason."""
    if isinstance(row, BadPairError):
        raise row
    if not isinstance(row, dict):
        raise _bad(where, path, f"expected a JSON object, got {type(row).__name__}")
    image, caption = _pick(row, IMAGE_KEYS), _pick(row, CAPTION_KEYS)
    if not isinstance(image, str) or not image.strip():
        raise _bad(where, path, f"missing, empty or non-string image (one of {list(IMAGE_KEYS)})")
    if not isinstance(caption, str):
        raise _bad(where, path, f"missing or non-string caption (one of {list(CAPTION_KEYS)})")
    if not caption.strip():
        raise _bad(where, path, "empty caption")
    return image.strip(), caption.strip()


def _jsonl_rows(path: str) -> Iterator[tuple[str, object]]:
    name = os.path.basename(path)
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, _bad(where, path, f"invalid JSON ({e})")


def _delimited_rows(path: str, delimiter: str, fieldnames: Sequence[str] | None) -> Iterator[tuple[str, object]]:
    """Rows as dicts; a header without an image or caption column fails the whole file, whatever ``on_bad_row``."""
    name = os.path.basename(path)
    consumed = 0  # lines handed to the csv reader: a quoted field may span lines, so its line_num is not the start

    def lines(f):
        nonlocal consumed
        for line in f:
            consumed += 1
            yield line

    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(lines(f), delimiter=delimiter)
        try:
            header = list(fieldnames) if fieldnames is not None else next(reader, [])
        except csv.Error as e:
            raise _bad(f"{name}:1", path, f"unreadable header ({e})") from e
        for keys, what in ((IMAGE_KEYS, "image"), (CAPTION_KEYS, "caption")):
            if not set(keys) & set(header):
                raise _bad(f"{name}:1", path, f"the header {header} has no {what} column (one of {list(keys)})")
        while True:
            where = f"{name}:{consumed + 1}"
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # the reader resets on its next call, so a skipped row does not end the file
                yield where, _bad(where, path, f"unreadable row ({e})")
                continue
            if values:  # a blank line is no row
                yield where, dict(zip(header, values))


def _coco_caption_rows(path: str) -> Iterator[tuple[str, object]]:
    """One row per caption annotation, in annotation order. The document is loaded whole (it is one JSON value)."""
    name = os.path.basename(path)
    with open(path, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise _bad(name, path, f"invalid JSON ({e})") from e
    if not (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "annotations"))):
        raise _bad(name, path, f"not COCO captions: expected {LAYOUTS['.json']}")
    files = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise _bad(f"{name}:images[{i}]", path, "an image needs an 'id' and a 'file_name'")
        files[img["id"]] = img["file_name"]
    for i, ann in enumerate(data["annotations"]):
        where = f"{name}:annotations[{i}]"
        if not isinstance(ann, dict):
            yield where, _bad(where, path, "an annotation must be a JSON object")
        elif ann.get("image_id") not in files:
            yield where, _bad(where, path, f"image_id {ann.get('image_id')!r} is not among the images")
        else:
            yield where, {"image": files[ann["image_id"]], "caption": ann.get("caption")}


def iter_image_text_pairs(
    path: str,
    image_root: str | None = None,
    *,
    on_bad_row: str = "error",
    counts: dict | None = None,
    fieldnames: Sequence[str] | None = None,
) -> Iterator[ImageTextPair]:
    """Stream the valid pairs of ``path``; the layout follows the extension (see :data:`LAYOUTS`).

    Args:
        path: a ``.jsonl``, ``.csv``, ``.tsv`` or COCO-captions ``.json`` file. The first three are streamed; the
            COCO json is loaded whole when iteration starts.
        image_root: joined in front of relative image paths (absolute paths and URLs are kept as they are).
        on_bad_row: ``"error"`` raises :class:`BadPairError` at the first bad row; ``"skip"`` logs it (the first
            few, then a summary) and goes on. Valid pairs keep contiguous indices either way.
        counts: when given, ``counts["pairs"]`` and ``counts["skipped"]`` are incremented as rows are read, so a
            caller can report them after (or during) the iteration.
        fieldnames: for a ``.csv``/``.tsv`` without a header row, its column names.

    The file's existence, its extension and ``on_bad_row`` are checked at the call, not at the first ``next()``.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    accepted = "; ".join(f"{e}: {d}" for e, d in LAYOUTS.items())
    if ext not in LAYOUTS:
        raise ValueError(f"{path}: unknown layout {ext!r}; accepted: {accepted}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (accepted layouts: {accepted})")
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if ext == ".jsonl":
        rows = _jsonl_rows(path)
    elif ext == ".json":
        rows = _coco_caption_rows(path)
    else:
        rows = _delimited_rows(path, "," if ext == ".csv" else "\t", fieldnames)
    return _pairs(rows, path, image_root, on_bad_row, {} if counts is None else counts)


def _pairs(rows, path: str, image_root: str | None, on_bad_row: str, counts: dict) -> Iterator[ImageTextPair]:
    counts.setdefault("pairs", 0)
    counts.setdefault("skipped", 0)
    index = skipped = 0
    for where, row in rows:
        try:
            image, caption = _image_and_caption(row, where, path)
        except BadPairError as e:
            if on_bad_row == "error":
                raise
            skipped += 1
            counts["skipped"] += 1
            if skipped <= _MAX_LOGGED_SKIPS:
                more = "; further skipped rows are only counted" if skipped == _MAX_LOGGED_SKIPS else ""
                logger.warning("skipping a bad row: %s%s", e, more)
            continue
        if image_root and not os.path.isabs(image) and "://" not in image:
            image = os.path.join(image_root, image)
        yield ImageTextPair(index=index, image=image, caption=caption, where=where)
        index += 1
        counts["pairs"] += 1
    if skipped:
        logger.warning("%s: skipped %d bad rows, read %d pairs", path, skipped, index)
