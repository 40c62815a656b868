"""How good are the pseudo boxes? Precision and recall of a shard folder against gold boxes of the same images.

Before a student trains for days on pseudo labels, one checks them on a few hundred images that have gold boxes
(the GLIP paper's teacher was judged by its own grounding AP; a per-box check says more about a threshold):

* precision: the share of pseudo boxes that overlap (IoU >= ``iou_threshold``) a gold object of the same image that
  their phrase names;
* recall: of the gold objects that some noun phrase of the caption names, the share covered by a pseudo box whose
  phrase names them.

``phrase_names(phrase, category_name)`` decides "names"; the default accepts every phrase (box-only precision, and
recall over all objects of the image). Images are matched by file name (basename), so the pseudo-labelled copy and
the gold copy of an image may live in different folders.
"""
import json
import os
from collections.abc import Callable

import torch
from torchvision.ops import box_iou

from ..data.prompts import free_text_prompt
from .shards import list_shards

__all__ = ["pseudo_label_quality"]


def _xyxy(boxes_xywh: list) -> torch.Tensor:
    t = torch.tensor(boxes_xywh, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def _gold_by_basename(gold_json: str) -> dict[str, list[tuple[list, str]]]:
    with open(gold_json, encoding="utf-8") as f:
        gold = json.load(f)
    names = {c["id"]: c["name"] for c in gold["categories"]}
    by_id, by_name = {}, {}
    for image in gold["images"]:
        base = os.path.basename(image["file_name"])
        if base in by_name:
            raise ValueError(f"{gold_json}: two gold images are named {base!r}; images are matched by file name")
        by_name[base] = by_id[image["id"]] = []
    for ann in gold["annotations"]:
        by_id[ann["image_id"]].append((ann["bbox"], names[ann["category_id"]]))
    return by_name


def _caption_phrases(caption: str) -> list[str]:
    try:
        return free_text_prompt(caption).phrases
    except ValueError:  # no noun phrase: nothing to recall
        return []


def pseudo_label_quality(shards_dir: str, gold_json: str, *, iou_threshold: float = 0.5,
                         phrase_names: Callable[[str, str], bool] | None = None) -> dict:
    """``{"pairs", "boxes", "precision", "objects", "recall"}`` of every shard in ``shards_dir`` against the COCO
    json ``gold_json`` (pairs whose image has no gold entry are an error: nothing to compare with)."""
    names = phrase_names or (lambda phrase, category: True)
    gold = _gold_by_basename(gold_json)
    pairs = boxes = correct = objects = recalled = 0
    for path in list_shards(shards_dir):
        with open(path, encoding="utf-8") as f:
            shard = json.load(f)
        anns_of = {}
        for ann in shard["annotations"]:
            anns_of.setdefault(ann["image_id"], []).append(ann)
        for image in shard["images"]:
            base = os.path.basename(image["file_name"])
            if base not in gold:
                raise ValueError(f"{path}: image {image['file_name']!r} has no gold boxes in {gold_json}")
            pairs += 1
            gold_objects, pseudo = gold[base], anns_of.get(image["id"], [])
            iou = box_iou(_xyxy([a["bbox"] for a in pseudo]), _xyxy([g[0] for g in gold_objects]))
            hit = iou >= iou_threshold  # [pseudo, gold]
            named = torch.tensor([[names(a["phrase"], g[1]) for g in gold_objects] for a in pseudo],
                                 dtype=torch.bool).reshape(hit.shape)
            boxes += len(pseudo)
            correct += int((hit & named).any(dim=1).sum())
            phrases = _caption_phrases(image["caption"])
            mentioned = [any(names(p, g[1]) for p in phrases) for g in gold_objects]
            covered = (hit & named).any(dim=0).tolist() if pseudo else [False] * len(gold_objects)
            objects += sum(mentioned)
            recalled += sum(m and c for m, c in zip(mentioned, covered))
    return {
        "pairs": pairs,
        "boxes": boxes,
        "precision": correct / boxes if boxes else 0.0,
        "objects": objects,
        "recall": recalled / objects if objects else 0.0,
    }
