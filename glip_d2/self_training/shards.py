"""Pseudo-label shards: the teacher's groundings written as MDETR-style grounding jsons, many small files.

Why shards: pseudo-labelling millions of pairs takes days on many GPUs, so the output is cut into files that are
each written once, atomically, by exactly one rank:

* shard ``k`` holds the pairs whose ``index`` is in ``[k * shard_size, (k + 1) * shard_size)`` and belongs to rank
  ``k % world_size``: ranks never write the same file and need no communication;
* a shard is written to a temporary file in the same folder and renamed with ``os.replace``, so a killed run leaves
  either the whole ``shard_*.json`` or none, and a rerun (resume) only redoes the shards that are missing;
* the bytes depend only on the records (sorted keys, fixed separators, rounded floats), not on the rank, the world
  size or whether the run was resumed, so an interrupted run ends with the same files as an uninterrupted one.

Each shard is a COCO json that :func:`glip_d2.data.datasets.mdetr.load_grounding_json` reads: images carry the
``caption``, annotations carry ``tokens_positive`` (char spans in the caption), plus ``phrase`` and ``score`` as
provenance. Pairs with no kept box are written too (an image without annotations), recording that they were done;
detectron2's ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` drops them from training.
"""
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.datasets.mdetr import load_grounding_json
from .image_text_pairs import ImageTextPair

__all__ = [
    "SHARD_INFO_KEYS",
    "ShardWriter",
    "list_shards",
    "load_pseudo_shards",
    "register_pseudo_grounding",
    "shard_path",
]

logger = logging.getLogger(__name__)

#: Keys the writer adds to each shard's ``info``; the caller's ``info`` may not use them.
SHARD_INFO_KEYS = ("shard_id", "shard_size", "index_range", "num_images")
_FINAL = re.compile(r"^shard_(\d{6,})\.json$")
_TEMP = re.compile(r"^\.shard_(\d{6,})\.json\.\d+\.tmp$")
_CATEGORIES = [{"id": 1, "name": "object"}]


def shard_path(output_dir: str, shard_id: int) -> str:
    """``output_dir/shard_{shard_id:06d}.json``."""
    return os.path.join(output_dir, f"shard_{shard_id:06d}.json")


def list_shards(output_dir: str) -> list[str]:
    """The final shard files of ``output_dir`` in shard order (temporary files of running or killed writers are not
    shards)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _FINAL.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def _dumps(doc: dict) -> bytes:
    """Byte-deterministic JSON: sorted keys, fixed separators, ASCII only, no NaN/inf."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _checked_box(box: dict, caption: str, where: str) -> dict:
    """One annotation's fields from a teacher box, validated (a bad span or box is a bug upstream: fail loudly)."""
    bbox = [float(v) for v in box["bbox"]]
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: bbox {box['bbox']!r} is not a finite [x, y, w, h] with w, h >= 0")
    try:
        spans = [[int(s), int(e)] for s, e in box["tokens_positive"]]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: tokens_positive {box['tokens_positive']!r} is not a list of [start, end]") from e
    if not spans:
        raise ValueError(f"{where}: a box has no tokens_positive span (phrase {box.get('phrase')!r})")
    for start, end in spans:
        if not 0 <= start < end <= len(caption):
            raise ValueError(
                f"{where}: span [{start}, {end}] of phrase {box.get('phrase')!r} is not a non-empty range inside "
                f"the caption of length {len(caption)} ({caption!r})"
            )
    score = float(box["score"])
    if not math.isfinite(score):
        raise ValueError(f"{where}: score {box['score']!r} is not finite")
    x, y, w, h = (round(v, 2) for v in bbox)
    return {
        "bbox": [x, y, w, h],
        "area": round(w * h, 2),
        "iscrowd": 0,
        "category_id": 1,
        "tokens_positive": spans,
        "phrase": str(box["phrase"]),
        "score": round(score, 4),
    }


class ShardWriter:
    """Writes the shards one rank owns into ``output_dir``; see the module docstring for the layout.

    Typical loop (the teacher part is the caller's)::

        writer = ShardWriter(out, shard_size=1000, rank=rank, world_size=world, info={"weights": ...})
        for shard_id, pairs in writer.pending(iter_image_text_pairs("pairs.jsonl", root, on_bad_row="skip")):
            writer.write(shard_id, [ground(pair) for pair in pairs])

    ``info`` (teacher config, weights, thresholds, ...) is stored in every shard. It must be the same on every rank
    and every rerun into the same ``output_dir`` (no timestamps): a writer refuses a folder whose existing shards
    were written with another ``info`` or ``shard_size``, so one dataset never mixes two teachers.
    """

    def __init__(
        self, output_dir: str, shard_size: int, *, rank: int = 0, world_size: int = 1, info: dict | None = None
    ):
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.output_dir = os.fspath(output_dir)
        self.shard_size, self.rank, self.world_size = int(shard_size), int(rank), int(world_size)
        self.info = json.loads(json.dumps(info or {}, allow_nan=False))  # JSON-able, normalized (tuples -> lists)
        clash = sorted(set(self.info) & set(SHARD_INFO_KEYS))
        if clash:
            raise ValueError(f"info keys {clash} are reserved for the writer ({list(SHARD_INFO_KEYS)})")
        os.makedirs(self.output_dir, exist_ok=True)
        self._remove_stale_temp_files()
        self._check_existing_shards()

    def _remove_stale_temp_files(self) -> None:
        """Temp files of shards this rank owns are left by a killed run of this rank: nobody else writes them."""
        for name in os.listdir(self.output_dir):
            m = _TEMP.match(name)
            if m and self.owns(int(m.group(1))):
                logger.info("removing %s left by an interrupted run", name)
                os.remove(os.path.join(self.output_dir, name))

    def _check_existing_shards(self) -> None:
        existing = list_shards(self.output_dir)
        if not existing:
            return
        with open(existing[0], encoding="utf-8") as f:
            info = json.load(f).get("info", {})
        theirs = {k: v for k, v in info.items() if k not in SHARD_INFO_KEYS}
        if info.get("shard_size") != self.shard_size or theirs != self.info:
            raise ValueError(
                f"{self.output_dir} already holds shards written with shard_size={info.get('shard_size')} and "
                f"info={theirs}, not shard_size={self.shard_size} and info={self.info}; resume with the same "
                "settings or write into a fresh folder"
            )

    def owns(self, shard_id: int) -> bool:
        """Whether this rank writes shard ``shard_id``."""
        return shard_id % self.world_size == self.rank

    def is_done(self, shard_id: int) -> bool:
        """Whether shard ``shard_id``'s final file exists (a temp file does not count)."""
        return os.path.isfile(shard_path(self.output_dir, shard_id))

    def pending(self, pairs: Iterable[ImageTextPair]) -> Iterator[tuple[int, list[ImageTextPair]]]:
        """``(shard_id, pairs)`` for each shard of the stream that this rank owns and that is not written yet.

        Pairs of other shards are read and dropped: at most one shard's pairs are held at a time. The stream must
        come in ``index`` order (as :func:`iter_image_text_pairs` yields it). Whether a shard is done is checked
        when the stream reaches it.
        """
        current, wanted, batch = None, False, []
        for pair in pairs:
            shard_id = pair.index // self.shard_size
            if shard_id != current:
                if current is not None and shard_id < current:
                    raise ValueError(f"{pair.where}: pair index {pair.index} comes after shard {current}; "
                                     "pairs must come in index order")
                if batch:
                    yield current, batch
                current, batch = shard_id, []
                wanted = self.owns(shard_id) and not self.is_done(shard_id)
            if wanted:
                batch.append(pair)
        if batch:
            yield current, batch

    def write(self, shard_id: int, records: list[dict]) -> str:
        """Write shard ``shard_id`` atomically; returns its path.

        Each record is ``{"pair": ImageTextPair, "width": int, "height": int, "boxes": [{"bbox": [x, y, w, h],
        "tokens_positive": [[start, end], ...], "phrase": str, "score": float}, ...]}`` with the bbox in absolute
        pixels (XYWH_ABS) and the spans as char offsets in ``pair.caption``. A record with no boxes is written as an
        image without annotations. Raises ``ValueError`` naming the pair's ``where`` for an invalid box or span.
        """
        if not self.owns(shard_id):
            raise ValueError(f"shard {shard_id} belongs to rank {shard_id % self.world_size}, not rank {self.rank}")
        start, stop = shard_id * self.shard_size, (shard_id + 1) * self.shard_size
        images, annotations, seen = [], [], set()
        for record in sorted(records, key=lambda r: r["pair"].index):
            pair = record["pair"]
            if not start <= pair.index < stop or pair.index in seen:
                raise ValueError(f"{pair.where}: pair index {pair.index} is not a new index of shard {shard_id} "
                                 f"([{start}, {stop}))")
            seen.add(pair.index)
            width, height = int(record["width"]), int(record["height"])
            if width <= 0 or height <= 0:
                raise ValueError(f"{pair.where}: image size {width}x{height} is not positive")
            image_id = pair.index + 1  # COCO ids start at 1; unique across shards
            images.append({"id": image_id, "file_name": pair.image, "caption": pair.caption, "width": width,
                           "height": height, "dataset_name": "pseudo"})
            for box in record.get("boxes") or []:
                ann = _checked_box(box, pair.caption, pair.where)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        info = {**self.info, "shard_id": shard_id, "shard_size": self.shard_size, "index_range": [start, stop],
                "num_images": len(images)}
        data = _dumps({"images": images, "annotations": annotations, "categories": _CATEGORIES, "info": info})
        final = shard_path(self.output_dir, shard_id)
        temp = os.path.join(self.output_dir, f".shard_{shard_id:06d}.json.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename must not become visible before the bytes are on disk
            os.replace(temp, final)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        return final


def load_pseudo_shards(output_dir: str, image_root: str | None = None, dataset_name: str | None = None) -> list[dict]:
    """detectron2 dataset dicts of every shard in ``output_dir``, through ``load_grounding_json``.

    ``image_root`` is joined in front of relative ``file_name`` s (absolute ones are kept); ``None`` keeps the
    paths as written. ``dataset_name`` is passed on (it sets ``thing_classes=["object"]`` and makes
    ``category_id`` 0). Raises ``FileNotFoundError`` when the folder holds no shard.
    """
    paths = list_shards(output_dir)
    if not paths:
        raise FileNotFoundError(f"{output_dir}: no pseudo-label shards (shard_NNNNNN.json) found")
    records, seen = [], set()
    for path in paths:
        for record in load_grounding_json(path, image_root or "", dataset_name):
            if record["image_id"] in seen:
                raise ValueError(f"{path}: image id {record['image_id']} is also in an earlier shard")
            seen.add(record["image_id"])
            records.append(record)
    return records


def _records_with_boxes(records: list[dict], name: str) -> list[dict]:
    """A pair whose phrases got no box teaches nothing as grounding data (its caption has no phrase to ground), so
    the registered dataset leaves it out, whatever ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` says."""
    kept = [r for r in records if r["annotations"]]
    if len(kept) < len(records):
        logger.info("%s: %d of %d pseudo-labelled pairs have no box and are left out", name,
                    len(records) - len(kept), len(records))
    return kept


def register_pseudo_grounding(name: str, output_dir: str, image_root: str | None = None) -> None:
    """Register the shards of ``output_dir`` as dataset ``name``; nothing is read until ``DatasetCatalog.get``.

    Pairs without a box are left out (they stay in the shards as processed). The metadata is that of a GoldG-style training set (``evaluator_type="mixed"``: grounding by caption spans, not
    by category; no evaluator), plus ``pseudo_label_dir``.
    """
    DatasetCatalog.register(name, lambda: _records_with_boxes(load_pseudo_shards(output_dir, image_root, name), name))
    meta = {"evaluator_type": "mixed", "pseudo_label_dir": output_dir}
    if image_root is not None:
        meta["image_root"] = image_root
    MetadataCatalog.get(name).set(**meta)
