"""Text prompts: category names / free text -> caption + character spans.

A :class:`Prompt` is the tokenizer-independent half of a grounding query: the caption, the character spans of
every row (a category or a phrase), the label each row reports as ``pred_classes`` and the text of each row.
``glip_d2.data.tokens.encode_prompt`` turns it into token positive maps.

Conventions reproduced from the official code:
* evaluation and training prompts join cleaned names with ". " and no trailing separator (official detail 18);
* the demo joins raw names with " . " and keeps the trailing separator (official detail 18);
* the detection training sampler: positive-overflow guard, 85 negative draws with probability 0.5 or
  1..85 otherwise, draws taken from all classes and then positives discarded, token budget of
  MAX_QUERY_LEN - 2, everything shuffled;
* large vocabularies are evaluated in chunks of 40 names.
"""
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .phrase_extraction import extract_noun_phrases

__all__ = [
    "BACKGROUND_LABEL",
    "Prompt",
    "build_caption",
    "clean_name",
    "demo_prompt",
    "free_text_prompt",
    "grounding_phrases",
    "sample_detection_prompt",
    "split_vocabulary",
    "vocabulary_prompt",
]

#: Pseudo label of the "__background__" negative of the O365 sampler (official detail 22); it never becomes a prompt row.
BACKGROUND_LABEL = -1
_BACKGROUND_NAME = "__background__"

Span = tuple[int, int]


@dataclass
class Prompt:
    """Caption plus, per row, its char spans ``[start, end)``, its reported label and its text (stripped)."""

    caption: str
    spans: list[list[Span]]
    labels: list[int]
    phrases: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.phrases:
            self.phrases = [" ".join(self.caption[s:e].strip() for s, e in row) for row in self.spans]
        if not (len(self.spans) == len(self.labels) == len(self.phrases)):
            raise ValueError(
                f"Prompt rows disagree: {len(self.spans)} span lists, {len(self.labels)} labels, "
                f"{len(self.phrases)} phrases (caption {self.caption!r})"
            )

    def __len__(self) -> int:
        return len(self.labels)


def clean_name(name: str) -> str:
    """Official ``clean_name``: drop "(...)" (greedy), "_" -> " ", collapse double spaces in one pass.

    LVIS ``bow_(weapon)`` becomes ``"bow "`` (trailing space kept; the char->token fallback handles it, official detail 19).
    """
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def _check_names(names: Sequence[str], what: str) -> None:
    if isinstance(names, str):
        raise TypeError(f"{what}: expected a list of names, got the string {names!r}")
    if len(names) == 0:
        raise ValueError(f"{what}: the list of names is empty")
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"{what}: name #{i} is {type(n).__name__} {n!r}, expected str")


def build_caption(
    names: Sequence[str], separator: str = ". ", trailing: bool = False, clean: bool = True
) -> tuple[str, list[Span]]:
    """Join names (in the given, i.e. contiguous-id, order) into a caption; return it and each name's span.

    Spans cover the (cleaned) name only, never the separator. ``trailing`` appends the separator after the last
    name too (demo convention).
    """
    _check_names(names, "build_caption")
    caption, spans = "", []
    for i, raw in enumerate(names):
        name = clean_name(raw) if clean else raw
        if not name.strip():
            raise ValueError(f"build_caption: name #{i} {raw!r} is empty" + (" after clean_name" if clean else ""))
        start = len(caption)
        caption += name
        spans.append((start, len(caption)))
        if trailing or i != len(names) - 1:
            caption += separator
    return caption, spans


def vocabulary_prompt(
    names: Sequence[str], labels: Sequence[int] | None = None, separator: str = ". "
) -> Prompt:
    """One detection prompt over ``names``; row i reports ``labels[i]`` (default: i)."""
    caption, spans = build_caption(names, separator=separator)
    labels = list(range(len(names))) if labels is None else [int(x) for x in labels]
    if len(labels) != len(names):
        raise ValueError(f"vocabulary_prompt: {len(names)} names but {len(labels)} labels")
    return Prompt(caption, [[s] for s in spans], labels, [caption[s:e].strip() for s, e in spans])


def _num_tokens(tokenizer, text: str) -> int:
    """Word-pieces of ``text`` (no [CLS]/[SEP]); ``verbose=False`` silences HF's >512-token warning."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def split_vocabulary(
    names: Sequence[str],
    tokenizer,
    *,
    max_len: int = 256,
    separator: str = ". ",
    chunk_size: int = 40,
    only_if_needed: bool = True,
    labels: Sequence[int] | None = None,
) -> list[Prompt]:
    """Inference prompts covering a whole vocabulary, each within ``max_len`` tokens ([CLS]/[SEP] included).

    ``only_if_needed``: a vocabulary that fits one prompt gives exactly one prompt. Otherwise ``chunk_size > 0``
    splits the sorted names into consecutive chunks of that many (official TEST.CHUNKED_EVALUATION, 40 for LVIS);
    ``chunk_size == 0`` packs names greedily up to the token limit; ``chunk_size < 0`` never splits.
    """
    _check_names(names, "split_vocabulary")
    labels = list(range(len(names))) if labels is None else [int(x) for x in labels]
    if len(labels) != len(names):
        raise ValueError(f"split_vocabulary: {len(names)} names but {len(labels)} labels")
    budget = max_len - 2
    for i, n in enumerate(names):
        n_tok = _num_tokens(tokenizer, clean_name(n))
        if n_tok > budget:
            raise ValueError(
                f"category name #{i} {n!r} alone has {n_tok} tokens, more than the {budget} a prompt of "
                f"MAX_QUERY_LEN={max_len} can hold"
            )

    def fits(lo, hi):
        caption, _ = build_caption(names[lo:hi], separator=separator)
        return _num_tokens(tokenizer, caption) <= budget

    if (only_if_needed or chunk_size < 0) and fits(0, len(names)):
        bounds = [(0, len(names))]
    elif chunk_size < 0:
        raise ValueError(
            f"the vocabulary of {len(names)} names does not fit one prompt of {max_len} tokens and chunking is "
            "off (INPUT.PROMPT.CHUNK_SIZE < 0); set CHUNK_SIZE to 40 (LVIS protocol) or 0 (fill each prompt)"
        )
    elif chunk_size > 0:
        bounds = [(i, min(i + chunk_size, len(names))) for i in range(0, len(names), chunk_size)]
        for lo, hi in bounds:
            if not fits(lo, hi):
                raise ValueError(
                    f"the chunk of names #{lo}..#{hi - 1} ({names[lo]!r} .. {names[hi - 1]!r}) exceeds "
                    f"{max_len} tokens; lower INPUT.PROMPT.CHUNK_SIZE ({chunk_size}) or set it to 0 (fill each prompt)"
                )
    else:
        bounds, lo = [], 0
        while lo < len(names):
            hi = lo + 1
            while hi < len(names) and fits(lo, hi + 1):
                hi += 1
            bounds.append((lo, hi))
            lo = hi
    return [vocabulary_prompt(names[lo:hi], labels[lo:hi], separator=separator) for lo, hi in bounds]


def sample_detection_prompt(
    positive_labels: Iterable[int],
    names: Sequence[str],
    tokenizer,
    rng,
    *,
    max_len: int = 256,
    separator: str = ". ",
    random_sample_neg: int = 85,
    full_negative_prob: float = 0.5,
    shuffle: bool = True,
    sample_negatives: bool = True,
    include_background: bool = False,
) -> Prompt:
    """Training prompt for one detection image (official ``od_to_grounding``).

    ``positive_labels``: contiguous ids of the classes with boxes in the image. ``rng``: a ``random.Random``
    (or the ``random`` module) -- the only source of randomness, so a seeded one makes the prompt reproducible.
    Returned rows are the classes in the caption (background excluded); a positive class missing from the rows
    was dropped by the overflow guard and its boxes must be dropped too.

    Modes: ``shuffle=False`` -> every class in sorted order (official DISABLE_SHUFFLE, fine-tuning);
    ``sample_negatives=False`` -> every class, shuffled (``convert_od_to_grounding_simple``);
    otherwise the O365 sampler.
    """
    _check_names(names, "sample_detection_prompt")
    num_classes = len(names)
    positives = sorted({int(x) for x in positive_labels})
    for p in positives:
        if not 0 <= p < num_classes:
            raise ValueError(f"positive label {p} is outside the {num_classes} classes of the vocabulary")
    budget = max_len - 2

    if not shuffle or not sample_negatives:
        order = list(range(num_classes))
        if shuffle:
            rng.shuffle(order)
        prompt = vocabulary_prompt([names[i] for i in order], order, separator=separator)
        n_tok = _num_tokens(tokenizer, prompt.caption)
        if n_tok > budget:
            raise ValueError(
                f"the full vocabulary of {num_classes} classes needs {n_tok} tokens, more than {budget}; "
                "enable INPUT.PROMPT.SAMPLE_NEGATIVES and SHUFFLE to sample a subset per image"
            )
        return prompt

    def name_of(label):
        return _BACKGROUND_NAME if label == BACKGROUND_LABEL else names[label]

    def cost(label):
        return _num_tokens(tokenizer, clean_name(name_of(label)) + separator)

    # 1. positive overflow guard: shuffled positives, stop once the running length exceeds the budget.
    rng.shuffle(positives)
    kept, positive_length = [], 0
    for label in positives:
        positive_length += cost(label)
        if positive_length > budget:
            break
        kept.append(label)

    # 2.-3. number of negative draws, drawn from every class (optionally with background), positives discarded.
    pool = ([BACKGROUND_LABEL] if include_background else []) + list(range(num_classes))
    full_negative = min(max(int(random_sample_neg), 0), len(pool))
    if rng.random() < full_negative_prob:
        num_draws = full_negative
    else:
        num_draws = rng.randint(1, max(1, full_negative)) if full_negative > 0 else 0
    positive_set = set(positives)
    negatives = [x for x in rng.sample(pool, min(num_draws, len(pool))) if x not in positive_set]
    rng.shuffle(negatives)

    # 4. keep negatives while the remaining budget stays positive.
    remaining, screened = budget - positive_length, []
    for label in negatives:
        remaining -= cost(label)
        if remaining <= 0:
            break
        screened.append(label)

    # 5. caption = shuffle(negatives + kept positives).
    order = screened + kept
    rng.shuffle(order)
    if not order:
        raise ValueError("sample_detection_prompt: the image has no positive class and no negative was drawn")
    caption, spans = build_caption([name_of(x) for x in order], separator=separator)
    rows = [(label, span) for label, span in zip(order, spans) if label != BACKGROUND_LABEL]
    return Prompt(
        caption, [[s] for _, s in rows], [label for label, _ in rows], [caption[s:e].strip() for _, (s, e) in rows]
    )


def demo_prompt(names: Sequence[str], separator: str = " . ") -> Prompt:
    """Official demo list prompt: every name (raw, not cleaned) followed by " . ", labels 0..K-1 in list order."""
    caption, spans = build_caption(names, separator=separator, trailing=True, clean=False)
    return Prompt(caption, [[s] for s in spans], list(range(len(names))), [caption[s:e].strip() for s, e in spans])


def _find_phrase(caption: str, phrase: str, first_only: bool) -> list[Span]:
    """Whole-word, literal matches of ``phrase`` (exact case first, then case-insensitive)."""
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in phrase.split()) + r"(?!\w)"
    for flags in (0, re.IGNORECASE):
        found = [(m.start(), m.end()) for m in re.finditer(pattern, caption, flags)]
        if found:
            return found[:1] if first_only else found
    return []


def free_text_prompt(
    caption: str,
    phrases: Sequence[str] | None = None,
    spans: Sequence | None = None,
) -> Prompt:
    """Free-text prompt; rows are the entities (labels 0..K-1).

    * ``spans``: explicit char spans, one entity each (a ``(start, end)`` pair or a list of pairs);
    * ``phrases``: explicit phrases, each located at its first whole-word match in the caption (official
      ``custom_entity`` "span"); a phrase that does not occur is an error;
    * neither: noun phrases found by :func:`extract_noun_phrases`; every occurrence of each becomes its own
      entity (official NLTK path, with duplicates merged and whole-word literal matching).
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"free_text_prompt: the caption is empty ({caption!r})")
    if phrases is not None and spans is not None:
        raise ValueError("free_text_prompt: give either phrases or spans, not both")
    rows: list[list[Span]] = []
    if spans is not None:
        if len(spans) == 0:
            raise ValueError(f"free_text_prompt: empty list of spans for caption {caption!r}")
        for i, entity in enumerate(spans):
            row = [tuple(entity)] if len(entity) == 2 and all(isinstance(v, int) for v in entity) else entity
            row = [tuple(int(v) for v in s) for s in row]
            for s, e in row:
                if not 0 <= s < e <= len(caption):
                    raise ValueError(
                        f"entity #{i}: span [{s}, {e}) is outside the caption {caption!r} (length {len(caption)})"
                    )
            rows.append(row)
    else:
        explicit = phrases is not None
        if explicit:
            _check_names(phrases, "free_text_prompt phrases")
            wanted = list(phrases)
        else:
            wanted = extract_noun_phrases(caption)
            if not wanted:
                raise ValueError(
                    f"no noun phrase found in {caption!r}; pass the phrases (or char spans) to ground explicitly"
                )
        seen = set()
        for phrase in wanted:
            if not phrase.strip():
                raise ValueError(f"free_text_prompt: empty phrase in {list(wanted)!r}")
            if phrase.lower() in seen:
                continue
            seen.add(phrase.lower())
            found = _find_phrase(caption, phrase, first_only=explicit)
            if not found:
                raise ValueError(f"phrase {phrase!r} does not occur in the caption {caption!r}")
            taken = [r[0] for r in rows]
            # an occurrence inside an already grounded phrase ("dogs" in "the dogs") is not a new entity
            rows.extend([[(s, e)] for s, e in found if explicit or not any(s < e2 and s2 < e for s2, e2 in taken)])
        rows.sort(key=lambda r: r[0])
    return Prompt(caption, rows, list(range(len(rows))))


# --------------------------------------------------------------------------------------------------------------
# Offline noun-phrase extraction (stand-in for NLTK's `NP: {<DT>?<JJ.*>*<NN.*>+}`, whose tagger data cannot be
# downloaded here). Closed-class word lists decide what cannot be part of a noun phrase; everything else is a
# content word. Heuristic by nature: pass explicit phrases when it matters.
# --------------------------------------------------------------------------------------------------------------
def grounding_phrases(dataset_dict: dict, use_eval: bool = True) -> tuple[list[list[Span]], list[int]]:
    """Phrases of a grounding record and the phrase index of each of its annotations (-1: none).

    Phrases are ``tokens_positive_eval`` when the record has it and ``use_eval`` (MDETR/GLIP evaluation format),
    else the distinct span lists of the annotations in first-appearance order. An annotation belongs to the first
    phrase whose spans overlap its own. Shared by the mapper (prompt rows) and the Flickr evaluator (ground truth).
    """
    annos = dataset_dict.get("annotations", [])
    caption = dataset_dict.get("caption", "")
    where = f"record image_id={dataset_dict.get('image_id', '?')!r}"
    if dataset_dict.get("file_name"):
        where += f" ({dataset_dict['file_name']})"

    def as_spans(raw, what):
        if not raw:
            raise ValueError(f"{where}: {what} has no character span (caption {caption!r})")
        spans = [tuple(int(v) for v in s) for s in raw]
        for s, e in spans:
            if not 0 <= s < e <= len(caption):
                raise ValueError(
                    f"{where}: {what} span [{s}, {e}) is outside its caption {caption!r} (length {len(caption)})"
                )
        return spans

    if use_eval and dataset_dict.get("tokens_positive_eval") is not None:
        phrases = [as_spans(p, f"phrase #{i}") for i, p in enumerate(dataset_dict["tokens_positive_eval"])]
    else:
        phrases, keys = [], {}
        for j, a in enumerate(annos):
            key = tuple(sorted(as_spans(a.get("tokens_positive"), f"annotation #{j}")))
            if key not in keys:
                keys[key] = len(phrases)
                phrases.append(list(key))

    def overlaps(a, b):
        return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)

    index = []
    for j, a in enumerate(annos):
        spans = as_spans(a.get("tokens_positive"), f"annotation #{j}") if a.get("tokens_positive") else []
        index.append(next((p for p, ph in enumerate(phrases) if overlaps(spans, ph)), -1))
    return phrases, index
