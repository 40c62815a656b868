"""Self-training on image–text pairs: a teacher GLIP grounds the noun phrases of captions, a student trains on them.

* :mod:`.image_text_pairs`: streaming readers of ``image, caption`` rows (jsonl, csv, tsv, COCO captions);
* :mod:`.grounding_teacher`: the teacher's pseudo boxes per phrase (score threshold, top-k);
* :mod:`.shards`: atomic, resumable, rank-partitioned MDETR-style shards, and their registration for training;
* :mod:`.pseudo_label`: one process's share of a run (``tools/pseudo_label.py`` launches the processes).
"""
from .grounding_teacher import GroundingTeacher
from .image_text_pairs import BadPairError, ImageTextPair, iter_image_text_pairs
from .pseudo_label import PseudoLabelSettings, count_pairs, pseudo_label
from .shards import ShardWriter, list_shards, load_pseudo_shards, register_pseudo_grounding, shard_path

__all__ = [
    "BadPairError",
    "GroundingTeacher",
    "ImageTextPair",
    "PseudoLabelSettings",
    "ShardWriter",
    "count_pairs",
    "iter_image_text_pairs",
    "list_shards",
    "load_pseudo_shards",
    "pseudo_label",
    "register_pseudo_grounding",
    "shard_path",
]
