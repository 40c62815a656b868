"""VQA v2-format datasets: questions + annotations jsons -> detectron2 records with soft answer targets.

Format (VQA v2): the questions json ``{"questions": [{"image_id", "question", "question_id"}, ...]}``, the
annotations json ``{"annotations": [{"question_id", "image_id", "answers": [{"answer", "answer_confidence",
"answer_id"}] * 10, "multiple_choice_answer", "answer_type", "question_type"}, ...]}`` (no annotations json for
test splits). Image file names: from an optional ``"images": [{"id", "file_name", "height"?, "width"?}]`` list in
the questions json (what the synthetic set writes), else from ``image_pattern`` formatted with ``image_id``
(VQA v2 on COCO 2014: ``"COCO_train2014_{image_id:012d}.jpg"``).

Answer vocabulary (``MetadataCatalog.get(name).answer_vocab``): the normalised ``multiple_choice_answer`` strings
occurring at least ``min_answer_count`` times in the training annotations (9 gives VQA v2's standard 3129 answers),
most frequent first (ties alphabetical). Validation sets take the training set's vocabulary (``answer_vocab=`` a
list, or the name of the registered training set), so a trained model's outputs mean the same answers.

Soft targets per question: every human answer normalised as the metric normalises predictions
(:func:`~glip_d2.evaluation.vqa_answers.normalize_answer`); an answer in the vocabulary given by ``c`` of the ``n``
annotators scores :func:`~glip_d2.evaluation.vqa_answers.soft_score` = the mean over the ``n`` leave-one-out subsets
of min(1, c' / 3), i.e. the accuracy the official metric would give that answer. With VQA v2's 10 answers this is
exactly the common min(1, 0.3 * c) (0.3, 0.6, 0.9, 1.0), so both conventions agree; the leave-one-out form also
holds for other answer counts. Records carry ``answer_ids`` / ``answer_scores`` (sparse).

Optional grounding (a glip_d2 extension, written by the synthetic set): an annotation may carry ``"boxes": [{"bbox":
[x, y, w, h], "category_id"?, "tokens_positive": [[start, end], ...]}]``, the objects the question refers to with the
character spans of the question that name them. They become the record's ``annotations`` (detectron2 boxes), so
GLIPv2VQA can keep the grounding loss while fine-tuning for VQA and return grounded boxes.
"""
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ...evaluation.vqa_answers import normalize_answer, soft_score

__all__ = [
    "DEFAULT_MIN_ANSWER_COUNT",
    "VQA_V2_BUILTIN",
    "build_answer_vocab",
    "load_vqa_json",
    "register_vqa",
    "register_vqa_from_cfg",
    "register_vqa_v2",
]

logger = logging.getLogger(__name__)

#: VQA v2 practice: answers given as multiple_choice_answer at least 9 times in train2014 -> 3129 answers.
DEFAULT_MIN_ANSWER_COUNT = 9


def read_json_with_list(path: str, key: str, fmt: str) -> dict:
    """A json object holding a ``key`` list (the layout of the COCO-style VQA and caption files), or a clear
    ``FileNotFoundError`` / ``ValueError`` naming the file and the ``fmt`` expected."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fmt} json not found: {path}")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a json object with a '{key}' list ({fmt} format)")
    return data


def _read(path: str, key: str) -> dict:
    return read_json_with_list(path, key, "VQA v2")


def _normalized(answer, question_id) -> str:
    if not isinstance(answer, str):
        raise ValueError(f"question_id {question_id}: answer {answer!r} is not a string")
    text = normalize_answer(answer)
    if not text:
        raise ValueError(f"question_id {question_id}: answer {answer!r} normalises to an empty string (the official "
                         "normalisation drops punctuation, articles and whitespace); fix or remove it")
    return text


def build_answer_vocab(annotations: Sequence[dict], min_count: int = DEFAULT_MIN_ANSWER_COUNT) -> list[str]:
    """Normalised multiple_choice_answers occurring >= ``min_count`` times, most frequent first, ties alphabetical."""
    if min_count < 1:
        raise ValueError(f"min_answer_count must be >= 1, got {min_count}")
    counts = Counter(_normalized(a.get("multiple_choice_answer"), a.get("question_id")) for a in annotations)
    vocab = sorted((ans for ans, c in counts.items() if c >= min_count), key=lambda ans: (-counts[ans], ans))
    if not vocab:
        raise ValueError(f"no answer occurs {min_count} or more times: the answer vocabulary would be empty "
                         "(lower min_answer_count)")
    return vocab


def _image_files(questions: dict, image_root: str, image_pattern: str | None) -> dict[int, dict]:
    images = questions.get("images")
    if images is not None:
        return {int(im["id"]): {"file_name": os.path.join(image_root, im["file_name"]),
                                **{k: int(im[k]) for k in ("height", "width") if k in im}} for im in images}
    if not image_pattern:
        raise ValueError("the questions json has no 'images' list: give image_pattern, e.g. "
                         "'COCO_train2014_{image_id:012d}.jpg'")
    return {}


def _grounding(ann: dict) -> list[dict]:
    return [{"bbox": [float(v) for v in b["bbox"]], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0,
             "category_id": int(b.get("category_id", 0)), "tokens_positive": [list(s) for s in b["tokens_positive"]]}
            for b in ann.get("boxes", [])]


def load_vqa_json(
    questions_json: str, annotations_json: str | None, image_root: str, answer_vocab: Sequence[str],
    image_pattern: str | None = None,
) -> list[dict]:
    """One record per question: ``file_name``, ``image_id``, ``question_id``, ``question`` and, with annotations,
    ``answers`` (the raw human answers, for the metric), ``answer_ids`` / ``answer_scores`` (soft targets over
    ``answer_vocab``), ``multiple_choice_answer``, ``answer_type``, ``question_type`` (+ ``annotations`` when the
    annotation has grounding ``boxes``). Raises ``ValueError`` for annotations without a question, answers that
    normalise to nothing and questions that are not strings."""
    questions = _read(questions_json, "questions")
    files = _image_files(questions, image_root, image_pattern)
    index = {answer: i for i, answer in enumerate(answer_vocab)}
    records, by_id = [], {}
    for q in questions["questions"]:
        for key in ("image_id", "question", "question_id"):
            if key not in q:
                raise ValueError(f"{questions_json}: question {q!r} has no '{key}'")
        if not isinstance(q["question"], str):
            raise ValueError(f"question_id {q['question_id']}: the question is {q['question']!r}, not a string")
        image_id = int(q["image_id"])
        if files:
            if image_id not in files:
                raise ValueError(f"question_id {q['question_id']}: image_id {image_id} is not in the 'images' list")
            image = dict(files[image_id])
        else:
            image = {"file_name": os.path.join(image_root, image_pattern.format(image_id=image_id))}
        record = {**image, "image_id": image_id, "question_id": int(q["question_id"]), "question": q["question"]}
        if int(q["question_id"]) in by_id:
            raise ValueError(f"{questions_json}: question_id {q['question_id']} appears twice")
        by_id[int(q["question_id"])] = record
        records.append(record)
    if annotations_json is None:
        return records
    for ann in _read(annotations_json, "annotations")["annotations"]:
        qid = ann.get("question_id")
        record = by_id.get(None if qid is None else int(qid))
        if record is None:
            raise ValueError(f"{annotations_json}: annotation of question_id {qid} has no question in {questions_json}")
        if int(ann.get("image_id", record["image_id"])) != record["image_id"]:
            raise ValueError(f"question_id {qid}: image_id {ann['image_id']} in the annotations but "
                             f"{record['image_id']} in the questions")
        answers = [a["answer"] if isinstance(a, dict) else a for a in ann.get("answers", [])]
        if not answers:
            raise ValueError(f"question_id {qid}: the annotation has no answers")
        counts = Counter(_normalized(a, qid) for a in answers)
        targets = sorted((index[a], soft_score(c, len(answers))) for a, c in counts.items() if a in index)
        record.update(
            answers=answers, answer_ids=[i for i, _ in targets], answer_scores=[s for _, s in targets],
            multiple_choice_answer=ann.get("multiple_choice_answer", counts.most_common(1)[0][0]),
            answer_type=ann.get("answer_type", "other"), question_type=ann.get("question_type", ""),
        )
        if ann.get("boxes"):
            record["annotations"] = _grounding(ann)
    return records


def register_vqa(
    name: str,
    questions_json: str,
    annotations_json: str | None,
    image_root: str,
    answer_vocab: Sequence[str] | str | None = None,
    *,
    image_pattern: str | None = None,
    min_answer_count: int = DEFAULT_MIN_ANSWER_COUNT,
    **metadata,
) -> list[str]:
    """Register a VQA v2-format dataset; returns its answer vocabulary (also ``MetadataCatalog.get(name)
    .answer_vocab``).

    ``answer_vocab``: None = built from this set's annotations (a training set; ``min_answer_count`` is the
    frequency threshold), a list of answers, or the name of a registered VQA set whose vocabulary to share (a
    validation set takes the training set's). The annotations json is read now when the vocabulary is built from
    it; records are loaded on ``DatasetCatalog.get``. ``metadata``: extra MetadataCatalog fields.
    """
    if isinstance(answer_vocab, str):
        shared = MetadataCatalog.get(answer_vocab).get("answer_vocab", None)
        if not shared:
            raise ValueError(f"answer_vocab={answer_vocab!r}: no registered VQA dataset of that name has a vocabulary")
        source, vocab = answer_vocab, list(shared)
    elif answer_vocab is None:
        if annotations_json is None:
            raise ValueError(f"{name}: without annotations the answer vocabulary must be given (answer_vocab=)")
        source, vocab = name, build_answer_vocab(_read(annotations_json, "annotations")["annotations"],
                                                 min_answer_count)
    else:
        source, vocab = "given", [str(a) for a in answer_vocab]
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError(f"{name}: answer_vocab must be a non-empty list of distinct answers")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_vqa_json(questions_json, annotations_json, image_root, vocab,
                                                        image_pattern))
    MetadataCatalog.get(name).set(
        evaluator_type="vqa", answer_vocab=vocab, answer_vocab_source=source, questions_json=questions_json,
        annotations_json=annotations_json, image_root=image_root, min_answer_count=int(min_answer_count), **metadata,
    )
    logger.info("registered VQA dataset %s (%d answers, vocabulary from %s)", name, len(vocab), source)
    return vocab


#: Builtin VQA v2 names -> (questions json, annotations json or None, image folder, image pattern, vocabulary
#: source), relative to ``$DETECTRON2_DATASETS/vqa``. Registered by :func:`register_vqa_from_cfg` only when a config
#: uses them (building the vocabulary reads the training annotations, ~300 MB), never at import.
VQA_V2_BUILTIN = {
    "vqa_v2_train": ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json",
                     "train2014", "COCO_train2014_{image_id:012d}.jpg", None),
    "vqa_v2_val": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
                   "val2014", "COCO_val2014_{image_id:012d}.jpg", "vqa_v2_train"),
    "vqa_v2_test_dev": ("v2_OpenEnded_mscoco_test-dev2015_questions.json", None,
                        "test2015", "COCO_test2015_{image_id:012d}.jpg", "vqa_v2_train"),
}


def register_vqa_v2(name: str, root: str | None = None) -> list[str]:
    """Register one builtin VQA v2 split (and the training split its vocabulary comes from); returns the vocabulary.
    ``root``: default ``$DETECTRON2_DATASETS`` (``./datasets``); files are under ``root/vqa``."""
    if name not in VQA_V2_BUILTIN:
        raise KeyError(f"{name!r} is not a builtin VQA v2 split ({sorted(VQA_V2_BUILTIN)})")
    root = os.path.join(os.path.expanduser(root or os.getenv("DETECTRON2_DATASETS", "datasets")), "vqa")
    questions, annotations, images, pattern, vocab_from = VQA_V2_BUILTIN[name]
    questions = os.path.join(root, questions)
    if name in DatasetCatalog.list() and MetadataCatalog.get(name).get("questions_json", None) == questions:
        return list(MetadataCatalog.get(name).answer_vocab)  # already registered with these files
    if vocab_from is not None:
        register_vqa_v2(vocab_from, os.path.dirname(root))
    return register_vqa(name, questions, None if annotations is None else os.path.join(root, annotations),
                        os.path.join(root, images), vocab_from, image_pattern=pattern)


def register_vqa_from_cfg(cfg) -> list[str]:
    """Register the builtin VQA v2 splits that DATASETS.TRAIN/TEST name; returns their names."""
    used = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if n in VQA_V2_BUILTIN]
    for name in used:
        register_vqa_v2(name)
    return used
