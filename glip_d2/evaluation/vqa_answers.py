"""VQA answer normalisation and the per-question VQA accuracy, with the semantics of the official VQA evaluation
(``vqaEval.py`` of the VQA API), written here from its behaviour.

Why a module of its own: the same normalisation decides the answer vocabulary and the soft training targets
(``glip_d2.data.datasets.vqa``) and the accuracy (``glip_d2.evaluation.vqa``); a vocabulary built with another
normalisation would train the model on strings the metric never accepts.

Official behaviour reproduced (and tested against hand-worked examples in tests/test_vqa_metric.py):

* **punctuation** (:func:`process_punctuation`): each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted
  when it touches a space in the answer (or the answer has a digit-comma-digit group such as ``1,000``), else
  replaced by a space; then every period not followed by a digit is deleted ("yes." -> "yes", "2.5" stays), at
  most 32 of them (the official call passes ``re.UNICODE`` where the count goes);
* **digits and articles** (:func:`process_digit_article`): lower-case, split on whitespace, number words
  ``none``/``zero``..``ten`` become digits, the articles ``a``/``an``/``the`` are dropped, apostrophe-less
  contractions get their apostrophes back ("dont" -> "don't"); words are re-joined with single spaces;
* **accuracy** (:func:`vqa_accuracy`): the prediction is stripped and fully normalised; the human answers are
  punctuation-processed only, and only when they disagree (VQA v2's answers are stored normalised already); the
  score is the mean over the leave-one-out subsets of ``min(1, matches among the other answers / 3)``.

The contractions table is generated from a list of standard English contractions (key = the spelling without
apostrophes, and for double contractions also with one of the two dropped), the same kind of map as the official
one. The official table's capitalised keys ("Im", "Ive", "Id've") can never match a lower-cased word, so they are
not included; a spelling outside the list is left as it is.
"""
import re
from collections.abc import Sequence

__all__ = [
    "ANSWER_TYPES",
    "CONTRACTIONS",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "soft_score",
    "vqa_accuracy",
]

#: Answer types of VQA v2 (the per-type breakdown of the metric).
ANSWER_TYPES = ("yes/no", "number", "other")

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# a period not followed by a digit (the official pattern's leading group is a mistyped look-behind that never
# constrains anything, so this is what it matches)
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # the official call passes re.UNICODE (= 32) as the replacement count

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset(("a", "an", "the"))

_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's isn't it'd it'd've it'll it's ma'am mightn't mightn't've might've mustn't "
    "must've needn't not've o'clock oughtn't 'ow's'at shan't she'd she'd've she's should've shouldn't shouldn't've "
    "somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd we'd've we'll we're we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've "
    "y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


_REAL_WORDS = ("its", "well", "were", "wed", "shed")


def _contraction_table(words: Sequence[str]) -> dict[str, str]:
    table = {}
    for word in words:
        table.setdefault(word.replace("'", ""), word)
        positions = [i for i, c in enumerate(word) if c == "'"]
        if len(positions) >= 2:  # double contractions: one apostrophe dropped, either one
            for p in positions:
                table.setdefault(word[:p] + word[p + 1:], word)
    # spellings that are ordinary words ("its" the possessive, "well", "were", "wed", "shed") stay as they are
    for word in _REAL_WORDS:
        table.pop(word, None)
    return table


#: apostrophe-less spelling -> contraction (see the module docstring).
CONTRACTIONS = _contraction_table(_CONTRACTED)


def process_punctuation(text: str) -> str:
    """The official punctuation rule (module docstring)."""
    out = text
    number_commas = _COMMA_IN_NUMBER.search(text) is not None
    for p in _PUNCTUATION:
        if p + " " in text or " " + p in text or number_commas:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Lower-case; number words -> digits; articles dropped; contractions restored (module docstring)."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The official normalisation of a predicted answer: whitespace, punctuation, digits/articles/contractions."""
    if not isinstance(answer, str):
        raise TypeError(f"an answer must be a str, got {type(answer).__name__} {answer!r}")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official accuracy of one predicted answer against the human answers (10 in VQA v2), in [0, 1].

    Example: 2 of 10 annotators said "2", 8 said "3"; predicting "two" scores (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    predicted = normalize_answer(prediction)
    answers = list(gt_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    total = 0.0
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == predicted)
        total += min(1.0, matches / 3.0)
    return total / len(answers)


def soft_score(count: int, num_answers: int) -> float:
    """Expected official accuracy of an answer given by ``count`` of ``num_answers`` annotators: the mean over the
    leave-one-out subsets of min(1, matches / 3). With 10 answers this equals the common min(1, 0.3 * count)."""
    if num_answers <= 0 or not 0 <= count <= num_answers:
        raise ValueError(f"count {count} of {num_answers} answers")
    if num_answers == 1:
        return 0.0  # leaving the only answer out leaves nothing to match
    left_out_giver = min(1.0, (count - 1) / 3.0) if count else 0.0
    left_out_other = min(1.0, count / 3.0)
    return (count * left_out_giver + (num_answers - count) * left_out_other) / num_answers
