"""Noun phrases of free text without a parser dependency: the phrases GLIP grounds when a caption comes alone.

The official demo runs NLTK's tagger and a chunk grammar, which needs NLTK data downloads at run time. This stand-in
chunks with word lists (determiners, function words, verb forms, adjectives), offline: "a man holding a red
umbrella" -> "a man", "a red umbrella".
"""
import re

__all__ = ["extract_noun_phrases"]


def _words(text: str) -> set:
    return set(text.split())


_DETERMINERS = _words(
    """
    a an the this that these those each every some any no another all both either neither
    """
)
#: Words that never belong to a noun phrase: pronouns, conjunctions, adverbs, prepositions, auxiliaries, numbers.
_FUNCTION = _words(
    """
    i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our
    ours ourselves they them their theirs themselves who whom whose which what where when why how there here and or
    but nor so yet if then than because while although though as not only also just very too quite rather of in on
    at by for with without within from to into onto upon over under above below behind beside besides between among
    around through across along against toward towards near next off out up down about after before during until
    beneath underneath via per like unlike together alone away is are was were be been being am do does did doing
    done have has had having will would shall should can could may might must get gets got getting let lets one two
    three four five six seven eight nine ten eleven twelve several many much more most few less least other others
    such same own
    """
)
#: Common caption verbs; their -s/-es/-ies forms and irregular pasts are added below (-ing/-ed/-ly: suffix rule).
_VERB_STEMS = """
    sit stand hold look wear ride walk run play eat lie lay go come take make carry use watch wait stay seem
    appear jump fly swim chase sleep throw catch kick hit push pull climb cross drive lean read write talk smile
    laugh pose cook drink feed fill follow grab hang help hug kiss lead lift listen move paint pick place pour
    prepare put reach rest rise roll say see sell serve sing skate ski slide smoke sniff speak spray stare surf
    swing touch travel try turn wave work wash fix hide bite chew lick graze perch float sail fish dive dance
    shop bake buy cover face fall fight grow hunt kneel land lay learn leave open paddle park pass pet point
    race relax rest roam run scoop shake share sip sleep snuggle splash squat stack stretch surround sweep teach
    tie toss wade walk watch wander wrap yell
"""
_IRREGULAR_PAST = "sat stood held wore rode ran ate lay went came took made saw threw caught flew swam sang sold said"
_IRREGULAR_PAST += " spoke drove slept fed led put cut rose fell hung lit hid bit grew fought knelt"


def _verb_forms() -> set:
    forms = _words(_IRREGULAR_PAST)
    for stem in _VERB_STEMS.split():
        forms.add(stem)
        if stem.endswith(("s", "sh", "ch", "x", "z", "o")):
            forms.add(stem + "es")
        elif stem.endswith("y") and stem[-2:-1] not in "aeiou":
            forms.add(stem[:-1] + "ies")
        else:
            forms.add(stem + "s")
    return forms


_VERB_BASES = _words(_VERB_STEMS)
#: Verb forms and relation words: not part of a noun phrase unless a determiner makes them nouns ("a swing").
_VERBS = _verb_forms() | _words("left right top bottom front back middle center centre side inside outside")
_ADJECTIVES = _words(
    """
    red green blue yellow orange purple pink brown black white gray grey golden silver dark light bright pale small
    large big little tiny huge giant tall short long wide narrow thick thin round square flat old young new good
    bad nice pretty beautiful happy sad empty full open closed wet dry hot cold
    """
)
#: Nouns that the -ing/-ed/-ly suffix rule would otherwise take for verbs or adverbs.
_SUFFIX_NOUNS = _words(
    """
    thing things ring rings king kings string strings building buildings ceiling painting paintings clothing bed
    beds shed sled sleds family belly jelly lily butterfly butterflies bowling wedding
    """
)
_WORD_RE = re.compile(r"\w+(?:-\w+)*|['\u2019]\w*|[^\w\s]")


def _verb_like(word: str) -> bool:
    """Words that end a noun phrase unless used as a noun/adjective (by position, see below)."""
    if word in _ADJECTIVES or word in _SUFFIX_NOUNS:
        return False
    return word in _FUNCTION or word in _VERBS or word.endswith(("ing", "ed", "ly"))


def extract_noun_phrases(text: str) -> list[str]:
    """Lower-cased noun phrases ``[determiner] adjectives* nouns+`` found with word lists (no downloads).

    A determiner may start a phrase; numbers, pronouns, prepositions, conjunctions, auxiliaries, common verbs and
    punctuation end one. An -ing/-ed/-ly word stays inside a phrase only right after its determiner ("a painting",
    "the left") or before another content word ("a striped shirt"). Trailing colour/size adjectives are dropped.
    """
    words = _WORD_RE.findall(text.lower())
    phrases, current, has_det = [], [], False

    def flush():
        nonlocal current, has_det
        det = current[:1] if has_det else []
        content = current[1:] if has_det else current
        if content and (det or not all(w in _ADJECTIVES for w in content)):  # "is red" is no noun phrase
            phrases.append(" ".join(det + content))
        current, has_det = [], False

    def has_det_only(cur):
        return has_det and len(cur) == 1

    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if not w[0].isalnum() or w.isdigit():
            flush()
        elif w in _DETERMINERS:
            flush()
            current, has_det = [w], True
        elif _verb_like(w):
            after_det = has_det and len(current) == 1 and w not in _FUNCTION
            before_content = (
                w not in _FUNCTION
                and bool(current)
                and nxt[:1].isalnum()
                and not _verb_like(nxt)
                and nxt not in _DETERMINERS
            )
            # a bare verb stem after a singular noun is a compound noun ("a fruit stand"; "dogs stand" is a verb)
            compound = (
                w in _VERB_BASES and bool(current) and not has_det_only(current) and not current[-1].endswith("s")
            )
            if after_det or before_content or compound:
                current.append(w)
            else:
                flush()
        else:
            current.append(w)
    flush()
    return phrases
