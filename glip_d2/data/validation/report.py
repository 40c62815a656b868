"""What a dataset check found: the problem kinds, what each policy does with them, and the summary users read.

The summary is logged before training starts (and printed by ``tools/check_dataset.py``), so its wording is for a
person deciding whether to fix the data or let ``DATASETS.ON_INVALID`` drop/clip it.
"""
from dataclasses import dataclass, field

__all__ = ["POLICIES", "PROBLEMS", "DatasetReport", "DatasetValidationError", "ProblemKind"]

#: DATASETS.ON_INVALID values.
POLICIES = ("error", "skip", "fix")
#: Examples kept (and shown) per problem kind.
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ProblemKind:
    """One kind of problem: what it is, what it counts, and what ``skip`` / ``fix`` do with it."""

    what: str
    unit: str  # "image", "annotation" or "category"
    on_skip: str
    on_fix: str
    #: Refused whatever the policy (the data cannot be used as it is and nothing can be dropped to repair it).
    always_error: bool = False
    #: Refused only under ``error``; with skip/fix a warning, the data unchanged.
    warn_only: bool = False


_DROP_IMAGE = "image dropped"
_DROP_ANN = "annotation dropped"
#: Every kind, in the order the summary lists them.
PROBLEMS: dict[str, ProblemKind] = dict(
    missing_image=ProblemKind("image file does not exist", "image", _DROP_IMAGE, _DROP_IMAGE),
    empty_image=ProblemKind("image file is empty (0 bytes)", "image", _DROP_IMAGE, _DROP_IMAGE),
    unreadable_image=ProblemKind("image file cannot be decoded (decoded sample)", "image", _DROP_IMAGE, _DROP_IMAGE),
    image_size_mismatch=ProblemKind(
        "decoded size differs from the record's width/height (decoded sample)", "image", _DROP_IMAGE, _DROP_IMAGE
    ),
    invalid_box=ProblemKind("box is not 4 finite numbers (NaN, inf, missing)", "annotation", _DROP_ANN, _DROP_ANN),
    negative_box=ProblemKind(
        "box with negative width or height", "annotation", _DROP_ANN, _DROP_ANN + " (which corner is meant is unknown)"
    ),
    empty_box=ProblemKind("box with zero width or height", "annotation", _DROP_ANN, _DROP_ANN),
    box_outside_image=ProblemKind(
        "box extends more than 1 px outside the image", "annotation", _DROP_ANN,
        "clipped to the image (dropped when nothing is left inside)",
    ),
    unknown_category=ProblemKind("category_id is not an index of thing_classes", "annotation", _DROP_ANN, _DROP_ANN),
    span_outside_caption=ProblemKind(
        "tokens_positive span is not a [start, end) range inside the caption", "annotation", _DROP_ANN, _DROP_ANN
    ),
    eval_span_outside_caption=ProblemKind(
        "tokens_positive_eval span is not a [start, end) range inside the caption", "image", _DROP_IMAGE, _DROP_IMAGE
    ),
    empty_category_name=ProblemKind(
        "category name is empty (after clean_name)", "category", "error", "error", always_error=True
    ),
    duplicate_category_name=ProblemKind(
        "category name repeats another one (same prompt text)", "category", "warned, kept", "warned, kept",
        warn_only=True,
    ),
)


def _n(count: int, unit: str) -> str:
    """``1 image``, ``2 images``, ``3 categories``."""
    if count == 1:
        return f"{count} {unit}"
    return f"{count} {unit[:-1]}ies" if unit.endswith("y") else f"{count} {unit}s"


@dataclass
class DatasetReport:
    """Counts and first examples of every problem in one dataset, and what the policy did about them."""

    name: str
    policy: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int | None = None
    files_checked: int | None = None  # None: image files not checked
    files_decoded: int = 0
    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    images_dropped: int = 0
    images_emptied: int = 0
    annotations_dropped: int = 0
    annotations_clipped: int = 0

    def add(self, kind: str, example: str) -> None:
        if kind not in PROBLEMS:
            raise KeyError(f"unknown problem kind {kind!r}")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    @property
    def errors(self) -> list[str]:
        """Kinds that stop training under this report's policy."""
        if self.policy == "error":
            return [k for k in self.counts]
        return [k for k in self.counts if PROBLEMS[k].always_error]

    @property
    def ok(self) -> bool:
        return not self.counts

    def _action(self, kind: str) -> str:
        p = PROBLEMS[kind]
        if kind in self.errors:
            return "error"
        return p.on_fix if self.policy == "fix" else p.on_skip

    def summary(self) -> str:
        cats = "" if self.num_categories is None else f", {_n(self.num_categories, 'category')}"
        lines = [
            f"Dataset check of '{self.name}': {_n(self.num_images, 'image')}, "
            f"{_n(self.num_annotations, 'annotation')}{cats}; "
            f"DATASETS.ON_INVALID '{self.policy}'",
        ]
        if self.files_checked is None:
            lines.append("  image files: not checked")
        else:
            lines.append(
                f"  image files: {self.files_checked} checked (exist, non-empty), {self.files_decoded} of them decoded "
                "(a random sample: decoding every image would take too long; DATASETS.DECODE_CHECK_IMAGES)"
            )
        if self.ok:
            lines.append("  no problems found")
            return "\n".join(lines)
        lines.append("  problems (count, first examples, action):")
        for kind, p in PROBLEMS.items():
            if kind not in self.counts:
                continue
            n = self.counts[kind]
            lines.append(f"    {kind}: {_n(n, p.unit)} -- {p.what} -> {self._action(kind)}")
            lines.extend(f"      {e}" for e in self.examples[kind])
        if self.policy != "error":
            lines.append(
                f"  result: {_n(self.annotations_dropped, 'annotation')} dropped, {self.annotations_clipped} clipped; "
                f"{_n(self.images_dropped, 'image')} dropped ({self.images_emptied} of them because every annotation "
                "was dropped)"
            )
        return "\n".join(lines)


_HINT = (
    "Fix the data, or set DATASETS.ON_INVALID 'skip' (drop the bad images/annotations, counted in the log) or 'fix' "
    "(as skip, but clip boxes that extend outside the image). Empty category names stop training under every "
    "policy: rename the categories (e.g. register_coco_grounding(..., thing_classes=[...])). "
    "tools/check_dataset.py --config-file CFG prints this report without training."
)


class DatasetValidationError(ValueError):
    """Raised at load time when a dataset has problems its policy does not allow; ``reports`` hold the details."""

    def __init__(self, reports, message: str | None = None):
        self.reports = list(reports) if isinstance(reports, (list, tuple)) else [reports]
        if message is None:
            bad = [r for r in self.reports if r.errors]
            message = "Dataset check failed before training:\n" + "\n".join(r.summary() for r in bad) + "\n" + _HINT
        super().__init__(message)
