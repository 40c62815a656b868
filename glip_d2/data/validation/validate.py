"""``validate_dataset_dicts``: one pass over a dataset's dicts at load time, applying ``DATASETS.ON_INVALID``.

Bad data otherwise fails late or silently: a negative-width box is trained as a different box, NaN boxes are
filtered uncounted by the mapper, a missing file or an empty category name crashes at the iteration that first
samples it. Policies (per problem kind in ``PROBLEMS``):

* ``error``: nothing changes; any problem raises one :class:`DatasetValidationError` with counts and examples;
* ``skip``: bad annotations and images are dropped and counted; an image whose every annotation was dropped is
  dropped too (kept, it would teach "nothing here" where the data says there are objects);
* ``fix``: as ``skip``, except a box extending past the image is clipped to it (the only unambiguous repair: a
  negative width could mean either corner, so it is dropped).

Under every policy empty category names (they are in every prompt, nothing can be dropped to repair them) and a
set left without any annotation (e.g. every box NaN) raise.
"""
import logging

from .checks import check_box, check_category, check_category_names, check_spans
from .images import check_image_files
from .report import POLICIES, PROBLEMS, DatasetReport, DatasetValidationError

__all__ = ["validate_dataset_dicts"]

logger = logging.getLogger(__name__)


def _where(d: dict) -> str:
    return f"image_id={d.get('image_id', '?')} ({d.get('file_name', '?')!r})"


def _annotation_problem(ann: dict, j: int, d: dict, num_classes, caption):
    """(kind, example, clipped bbox or None) of annotation #j, or None."""
    found = check_box(ann, d.get("height"), d.get("width"))
    if found:
        kind, desc, clipped = found
        return kind, f"{_where(d)}: annotation #{j} {desc}", clipped
    found = check_category(ann, num_classes)
    if found:
        return found[0], f"{_where(d)}: annotation #{j} {found[1]}", None
    if isinstance(caption, str) and "tokens_positive" in ann:
        bad = check_spans(ann["tokens_positive"], caption)
        if bad:
            return "span_outside_caption", f"{_where(d)}: annotation #{j} {bad}", None
    return None


def _eval_span_problem(d: dict):
    caption = d.get("caption")
    if not isinstance(caption, str) or "tokens_positive_eval" not in d:
        return None
    for i, phrase in enumerate(d["tokens_positive_eval"]):
        bad = check_spans(phrase, caption)
        if bad:
            return f"{_where(d)}: tokens_positive_eval[{i}] {bad}"
    return None


def _clean_record(d: dict, report: DatasetReport, policy: str, num_classes):
    """The record with bad annotations dropped / boxes clipped (the same object when nothing changed), or None."""
    annos = d.get("annotations", [])
    kept, changed = [], False
    for j, ann in enumerate(annos):
        found = _annotation_problem(ann, j, d, num_classes, d.get("caption"))
        if found is None:
            kept.append(ann)
            continue
        kind, example, clipped = found
        report.add(kind, example)
        changed = True
        if policy == "fix" and kind == "box_outside_image" and clipped is not None:
            kept.append(dict(ann, bbox=clipped))
            report.annotations_clipped += 1
        else:
            report.annotations_dropped += 1
    eval_problem = _eval_span_problem(d)
    if eval_problem:
        report.add("eval_span_outside_caption", eval_problem)
        return None
    if not changed:
        return d
    if annos and not kept:
        report.images_emptied += 1
        return None
    return dict(d, annotations=kept)


def validate_dataset_dicts(
    dataset_dicts: list,
    metadata=None,
    policy: str = "error",
    *,
    name: str | None = None,
    decode_sample: int = 16,
    image_format: str = "BGR",
    check_files: bool = True,
) -> tuple[list, DatasetReport]:
    """Check every record of one dataset; return (dicts per ``policy``, report) or raise.

    Args:
        metadata: the dataset's ``MetadataCatalog`` entry (``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` are read when present).
        policy: ``"error"``, ``"skip"`` or ``"fix"`` (module docstring). The input list and its dicts are never
            modified; without problems the same list is returned.
        decode_sample: images decoded to check they are readable and of the record's size (all are stat-ed).
        check_files: False skips the image-file checks (records without images, tests).

    Raises:
        DatasetValidationError: problems ``policy`` does not allow, or no annotation left; ``.reports`` has the
            report.
    """
    if policy not in POLICIES:
        raise ValueError(f"DATASETS.ON_INVALID must be one of {POLICIES}, got {policy!r}")
    name = name or (metadata.name if metadata is not None and hasattr(metadata, "name") else "(unnamed)")
    classes = metadata.get("thing_classes", None) if metadata is not None else None
    report = DatasetReport(name, policy, num_images=len(dataset_dicts),
                           num_annotations=sum(len(d.get("annotations", [])) for d in dataset_dicts),
                           num_categories=None if classes is None else len(classes))
    if classes is not None:
        id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
        for kind, example in check_category_names(list(classes), id_map):
            report.add(kind, example)

    file_problems = {}
    if check_files:
        file_problems, report.files_checked, report.files_decoded = check_image_files(
            dataset_dicts, decode_sample=decode_sample, image_format=image_format
        )
    out = []
    for i, d in enumerate(dataset_dicts):
        if i in file_problems:
            kind, detail = file_problems[i]
            report.add(kind, f"{_where(d)}" + (f": {detail}" if detail else ""))
            report.images_dropped += 1
            continue
        cleaned = _clean_record(d, report, policy, None if classes is None else len(classes))
        if cleaned is None:
            report.images_dropped += 1
        else:
            out.append(cleaned)

    if report.errors:
        raise DatasetValidationError(report)
    if report.num_annotations and not any(d.get("annotations") for d in out):
        raise DatasetValidationError(report, f"{report.summary()}\nNo valid annotation is left in '{name}': every "
                                             "one of its annotations (or images) has a problem. Nothing to train on.")
    if not out:
        raise DatasetValidationError(report, f"{report.summary()}\nNo image of '{name}' is left.")
    if any(PROBLEMS[k].warn_only for k in report.counts):
        logger.warning(f"'{name}': duplicate category names give identical prompt rows the model cannot tell apart")
    same = len(out) == len(dataset_dicts) and all(a is b for a, b in zip(out, dataset_dicts))
    return (dataset_dicts if same else out), report
