"""Flickr30k Entities phrase types, for the per-type recall the official Flickr evaluator reports.

The MDETR-style jsons (``final_flickr_separateGT_*.json``) carry no types: their images have the sentence
(``caption``), ``original_img_id``, ``sentence_id`` and the evaluated phrases' spans (``tokens_positive_eval``),
all derived from the Entities' ``Sentences/<image id>.txt``. That file writes a phrase as
``[/EN#<entity id>/<type>[/<type>...] word ... word]``, so reading it again gives each span its types (a phrase
may have several and then counts in each). A record may also carry ``phrase_types`` itself (one list per
evaluated phrase), which wins.
"""
import logging
import os

from detectron2.utils.file_io import PathManager

__all__ = ["PHRASE_TYPES", "parse_entities_sentence", "record_phrase_types"]

logger = logging.getLogger(__name__)

#: The coarse types of Flickr30k Entities ("notvisual" phrases have no box and are never evaluated).
PHRASE_TYPES = ("people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other")


def parse_entities_sentence(line: str) -> tuple[str, dict[tuple[int, int], list[str]]]:
    """One annotated sentence -> (the plain sentence, {(start, end) character span of a phrase: its types})."""
    words, phrases, current = [], {}, None
    for token in line.split():
        if current is None and token.startswith("[/EN#"):
            current = (len(words), token.split("/")[2:])  # first word of the phrase, its types
            continue
        if current is not None and token.endswith("]"):
            words.append(token[:-1])
            start = sum(len(w) + 1 for w in words[: current[0]])
            end = start + len(" ".join(words[current[0]:]))
            phrases[(start, end)] = current[1]
            current = None
            continue
        words.append(token)
    return " ".join(words), phrases


def _sentences(path: str) -> list[tuple[str, dict]]:
    with PathManager.open(path, "r") as f:
        return [parse_entities_sentence(line) for line in f.read().split("\n") if line.strip()]


def record_phrase_types(records: list[dict], entities_root: str | None) -> dict[object, list[list[str]]]:
    """image_id -> the types of each evaluated phrase (``tokens_positive_eval`` order) for the records whose types
    are known: their own ``phrase_types``, else ``<entities_root>/Sentences/<original_img_id>.txt``."""
    out, cache, missing = {}, {}, 0
    sentences_dir = os.path.join(entities_root, "Sentences") if entities_root else None
    for r in records:
        if r.get("phrase_types") is not None:
            out[r["image_id"]] = [list(t) for t in r["phrase_types"]]
            continue
        if sentences_dir is None or not all(k in r for k in ("original_img_id", "sentence_id", "tokens_positive_eval")):
            continue
        path = os.path.join(sentences_dir, f"{r['original_img_id']}.txt")
        if path not in cache:
            cache[path] = _sentences(path) if PathManager.exists(path) else None
        if cache[path] is None or int(r["sentence_id"]) >= len(cache[path]):
            missing += 1
            continue
        sentence, spans = cache[path][int(r["sentence_id"])]
        if sentence != r.get("caption", sentence):
            missing += 1
            continue
        out[r["image_id"]] = [spans.get(tuple(p[0]), []) if p else [] for p in r["tokens_positive_eval"]]
    if missing:
        logger.warning(f"Flickr30k phrase types: no matching sentence under {sentences_dir} for {missing} record(s)")
    return out
