"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) through pycocoevalcap, with or without Java.

The official COCO caption evaluation (pycocoevalcap) first runs Stanford CoreNLP 3.4.1's ``PTBTokenizer``
(``-preserveLines -lowerCase``) on candidates and references and drops the punctuation tokens listed in
``pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS``; only then are the n-gram scorers run. The tokenizer, METEOR and
SPICE are Java programs, and many machines (CI included) have no Java. So:

* :func:`python_ptb_tokenize` is a pure-Python port of the parts of the 3.4.1 lexer (``PTBLexer.flex``, checked
  against the jar's output) that English captions exercise, so BLEU / ROUGE-L / CIDEr-D computed without Java are the
  official numbers for ordinary captions;
* BLEU, ROUGE-L and CIDEr-D are pure Python in pycocoevalcap and always run; METEOR runs when Java is available and
  SPICE only when asked for (it is slow and downloads Stanford CoreNLP models, ~1 GB, on first use).

pycocoevalcap's ``Cider`` is CIDEr-D (the variant with the Gaussian length penalty, clipped counts and x10 scale that
the COCO server reports as "CIDEr"), hence the key "CIDEr_D" here. Keys use "_" (BLEU_4, ROUGE_L, as the COCO toolkit
names them): detectron2's ``print_csv_format`` leaves out keys with "-". Scores are percentages (x100), as papers report.
"""
import contextlib
import functools
import io
import logging
import re
import shutil
import subprocess
from collections import OrderedDict
from collections.abc import Hashable, Mapping

__all__ = ["PUNCTUATIONS", "java_available", "python_ptb_tokenize", "score_captions", "tokenize_captions"]

logger = logging.getLogger(__name__)

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (copied: importing the module is cheap, but this keeps the pure-
# Python path free of it). Note they are compared after -lowerCase, so "-LRB-" & co never match: brackets survive as
# "-lrb-" / "-rrb-" / "-lsb-" / ... tokens in the official evaluation, and in python_ptb_tokenize too.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

METRIC_KEYS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr_D", "SPICE")

# --------------------------------------------------------------------------------------------------------------------
# Pure-Python PTBTokenizer
# --------------------------------------------------------------------------------------------------------------------
# The lexer is JFlex: at each position every rule is tried and the longest match wins (a rule's trailing context
# "a/b" counts towards the length but is not consumed), ties going to the earlier rule. Rules are kept in the order of
# PTBLexer.flex. JFlex's %caseless makes literal strings case-insensitive but not character classes, hence explicit
# (?i:...) around literals and case-sensitive classes elsewhere.

# [:letter:]; Python's \w also has numeric non-digits (fractions, superscripts, number forms): not letters
_L = "[^\\W\\d_\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F\u2460-\u24FF]"
_APOS = "['\u0092\u2019]"
_APOSETC = "['\u0092\u2019\u0091\u2018\u201B]"
_SPACE = "[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = "\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085]"
_SPACENL = f"(?:{_SPACE}|{_NEWLINE})"
_INSENTP = "[,;:\u3001]"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
_HYPHEN = "[-_\u058A\u2010\u2011]"


def _caseless(alternatives: str) -> str:
    """JFlex %caseless for a list of literal alternatives: a one-letter class like ``[A]`` stays case-sensitive."""
    return "(?i:" + re.sub(r"\[([A-Za-z])\]", r"(?-i:\1)", alternatives) + ")"


_ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
_ABSTATE = ("Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|"
            "[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo")
_ABTITLE = ("Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Mt|"
            "Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|M|MM|Mme|Mmes|Mlle|Mlles")
_ABPTIT = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
_ABCOMP = "Inc|Cos?|Corp|Pp?tys?|Ltd|Plc|Bancorp|Dept|Bhd|Assn|Univ|Intl|Sys"
_ABCOMP2 = "Invt|Elec|Natl|M[ft]g"
_ABNUM = "Ph|tel|est|ext|sq|ft"  # (3.4.1: "No." and "Prop." keep their period only before a number)
_ABBREV1 = _caseless("|".join([_ABMONTH, _ABDAYS, _ABSTATE, _ABCOMP, _ABNUM, _ABPTIT, "etc|al|seq"])) + r"\."
# (ACRO first: Python takes the first alternative that matches, JFlex the longest)
_ABBREV4 = f"(?:{_ACRO}|[A-Za-z]|{_caseless(_ABTITLE)}|(?i:vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS)|(?i:{_ABCOMP2}))"

_THING_PART = f"(?:[dDoOlL]{_APOSETC}[^\\W_])?[^\\W_]+"
_HTHING = r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|" + _ACRO + r"\.))+"
_THINGA = r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
_PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \u00A0])?[0-9]{2,4}[- \u00A0])[0-9]{3,4}[- \u00A0]?"
          r"[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
_MISCSYMBOL = ("[+%&~^|\\\\<>\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u0387"
               "\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E"
               "\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40"
               "\uFF5B-\uFF65]")


def _latex_quotes(tok: str, probably_left: bool) -> str:
    """PTBLexer.latexQuotes: ASCII and curly quotes to the LaTeX/PTB ` `` ' '' forms."""
    if probably_left:
        tok = tok.replace("'", "`").replace('"', "``")
    else:
        tok = tok.replace('"', "''")
    tok = re.sub("[\u0091\u2018\u201B\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203A]", "'", tok)
    tok = re.sub("[\u0093\u201C\u00AB]", "``", tok)
    return re.sub("[\u0094\u201D\u00BB]", "''", tok)


def _currency(tok: str) -> str:
    return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok.replace("\u00A2", "cents").replace("\u00A3", "#"))


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}

_KEEP = None  # action: the matched text itself
_SKIP = ""  # action: no token

# (main pattern, trailing context or None, action: _KEEP, _SKIP, a fixed string or a callable on the text)
_RULES = [
    ("(?i:can)", "(?i:not)", _KEEP),  # cannot -> can not
    ("(?i:gon|wan)", "(?i:na)", _KEEP),  # gonna, wanna -> gon na, wan na (3.4.1)
    ("(?i:got)", "(?i:ta)", _KEEP),
    ("(?i:lem|gim)", "(?i:me)", _KEEP),
    (f"{_APOS}(?i:t)", "(?i:is|was)", _KEEP),  # 'tis, 'twas -> 't is, 't was (3.4.1)
    (r"</?[A-Za-z!?][^>\r\n]*>", None, lambda t: t.replace(" ", "\u00A0")),  # SGML
    ("(?i:&(?:MD|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]", None, "--"),  # SPMDASH
    ("(?i:&amp;)", None, "&"),
    (f"{_L}+", f"{_APOS}(?i:[msd]|re|ve|ll)", _KEEP),  # {WORD}/{REDAUX}: man's -> man 's
    ("[A-Za-z]*[A-MO-Za-mo-z]", f"(?i:n){_APOSETC}(?i:t)", _KEEP),  # {SWORD}/{SREDAUX}: don't -> do n't
    (f"{_L}+", None, _KEEP),  # WORD
    # APOWORD (words that keep their apostrophe)
    (f"{_APOS}(?i:n){_APOS}?", None, _KEEP),
    (f"[lLdDjJ]{_APOS}", None, _KEEP),
    (f"(?i:dunkin|somethin|ol){_APOS}", None, _KEEP),
    (f"{_APOS}(?i:em)", None, _KEEP),
    (f"[A-HJ-XZn]{_APOSETC}{_L}{{2,}}", None, _KEEP),
    (f"{_APOS}[2-9]0(?i:s)", None, _KEEP),
    (f"{_APOS}(?i:till?)", None, _KEEP),
    (f"{_L}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_L}*", None, _KEEP),
    (f"{_APOS}(?i:cause)", None, _KEEP),
    (r"(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)", None, _KEEP),
    (f"(?i:y){_APOS}", _L, _KEEP),  # APOWORD2: y'all -> y' all
    (r"(?i:https?)://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]", None, _KEEP),  # FULLURL
    (r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+"
     r"(?i:com|net|org|edu)))(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?", None, _KEEP),  # LIKELYURL
    ("[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\\.)*[^ \t\n\f\r\"<>|().\u00A0]+",
     None, _KEEP),  # EMAIL
    (f"@[a-zA-Z_][a-zA-Z_0-9]*|#{_L}+", None, _KEEP),  # TWITTER
    (f"{_APOS}(?i:[msd]|re|ve|ll)", "[^A-Za-z]", lambda t: _latex_quotes(t, False)),  # REDAUX
    (f"(?i:n){_APOSETC}(?i:t)", None, lambda t: _latex_quotes(t, False)),  # SREDAUX
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", None, _KEEP),  # DATE
    (r"[-+]?(?:\d*(?:[.:,\u00AD\u066B\u066C]\d+)+|\d+)", None, lambda t: t.replace("\u00AD", "")),  # NUMBER
    ("(?:\\d{1,4}[- \u00A0])?\\d{1,4}(?:\\\\?/|\u2044)\\d{1,4}", None, lambda t: t.replace(" ", "\u00A0")),  # FRAC
    ("[\u00BC\u00BD\u00BE\u2153-\u215E]", None, lambda t: _FRACTIONS.get(t, t)),  # FRAC2
    (f"(?i:-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\\.D\\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap{_APOS}n|"
     f"c{_APOS}est)", None, lambda t: re.sub("(?i:&amp;)", "&", t)),  # TBSPEC
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, _KEEP),  # THING3
    (r"[A-Z]*\$|#", None, _KEEP),  # DOLSIGN
    ("[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", None, _currency),
    (r"(?i:nos?|prop)\.", f"{_SPACE}*\\d", _KEEP),  # "No. 5" -> "no. 5", but "no. way" -> "no way"
    (_ABBREV1, None, _KEEP),  # (an abbreviation before a sentence end also yields a ".", which is dropped anyway)
    (_ABBREV4 + r"\.", None, _KEEP),  # ABBREV2: single letters, titles, acronyms keep their period
    (_ABBREV4, _SPACE, _KEEP),
    (_ACRO, _SPACENL, _KEEP),
    (r"'[0-9][0-9]", _SPACENL, _KEEP),  # TBSPEC2
    (f"{_L}+\\.", _INSENTP, _KEEP),  # "cat., a dog" -> "cat." ","
    (_PHONE, None, lambda t: t.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-")),
    ('"|(?i:&quot;)', "[A-Za-z0-9$]", "``"),
    ('"|(?i:&quot;)', None, "''"),
    ("\u007f", None, _SKIP),
    (r"\[", None, "-LSB-"),
    (r"\]", None, "-RSB-"),
    (r"\{", None, "-LCB-"),
    (r"\}", None, "-RCB-"),
    (r"\(", None, "-LRB-"),
    (r"\)", None, "-RRB-"),
    (r"-+", None, lambda t: "--" if 3 <= len(t) <= 4 else t),  # HYPHENS
    ("\\.{3,5}|(?:\\.[ \u00A0]){2,4}\\.|[\u0085\u2026]", None, "..."),  # LDOTS
    (r"@+|#+|_+", None, _KEEP),  # FNMARKS
    (r"\*+|(?:\\\*){1,3}", None, _KEEP),  # ASTS
    (_INSENTP, None, _KEEP),
    (r"[?!]+", None, _KEEP),
    ("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, _KEEP),
    ("=", None, _KEEP),
    ("/", None, _KEEP),
    (_HTHING + r"\.", _INSENTP, lambda t: t.replace("\u00AD", "")),
    (_HTHING, None, lambda t: t.replace("\u00AD", "")),  # black-and-white, t-shirt, 12-year-old
    (f"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*\\.", _INSENTP, _KEEP),
    (f"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*", None, _KEEP),  # THING: o'clock, 4x4, 2nd
    (_THINGA + r"\.", _INSENTP, lambda t: re.sub("(?i:&amp;)", "&", t)),
    (_THINGA, None, lambda t: re.sub("(?i:&amp;)", "&", t)),  # AT&T
    (f"{_L}+(?:\\.{_L}+)+", None, _KEEP),  # 3.4.1: "hello.world", "dog.a" stay one token
    ("'", "[A-Za-z][^ \t\n\r\u00A0]", "`"),  # an opening single quote
    (f"{_APOS}(?i:[msd]|re|ve|ll)", None, lambda t: _latex_quotes(t, False)),
    ("''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}|"
     + _APOS, None, lambda t: _latex_quotes(t, False)),  # QUOTES
    ("<<|>>", None, _KEEP),
    (_MISCSYMBOL, None, _KEEP),
    (f"(?:{_SPACE}|[\u0000\u200B\u200E\u200F\uFEFF]|{_NEWLINE})+", None, _SKIP),
]
_COMPILED = [
    (re.compile(main if trail is None else f"(?:{main})(?=(?P<trail>{trail}))"), trail is not None, action)
    for main, trail, action in _RULES
]
_PLAIN_WORD = re.compile(r"([A-Za-z]+)(?=[ \t\n])")
_SPECIAL_WORDS = frozenset(["cannot", "gonna", "wanna", "gotta", "lemme", "gimme"])


def _lex(text: str) -> list[str]:
    tokens = []
    text = text + "\n"  # pycocoevalcap joins captions with newlines: every caption but the last is followed by one
    pos, end = 0, len(text)
    while pos < end:
        m = _PLAIN_WORD.match(text, pos)  # fast path: a plain ASCII word before whitespace is a WORD token
        if m is not None and m.group(1).lower() not in _SPECIAL_WORDS:
            tokens.append(m.group(1))
            pos = m.end(1)
            continue
        best_len, best_consumed, best_action = 0, 0, _SKIP
        for rx, has_trail, action in _COMPILED:
            m = rx.match(text, pos)
            if m is None:
                continue
            consumed = m.end() - pos
            length = consumed + (len(m.group("trail")) if has_trail else 0)
            if length > best_len and consumed > 0:
                best_len, best_consumed, best_action = length, consumed, action
        if best_consumed == 0:  # untokenizable character: deleted (the Java lexer logs a warning)
            pos += 1
            continue
        tok = text[pos:pos + best_consumed]
        pos += best_consumed
        if best_action is _KEEP:
            tokens.append(tok)
        elif callable(best_action):
            tokens.append(best_action(tok))
        elif best_action:
            tokens.append(best_action)
    return tokens


@functools.lru_cache(maxsize=1 << 16)
def python_ptb_tokenize(text: str) -> str:
    """Tokenize one caption as pycocoevalcap's ``PTBTokenizer`` does, without Java: Stanford PTBTokenizer 3.4.1 with
    ``-preserveLines -lowerCase``, then drop the ``PUNCTUATIONS`` tokens and join with single spaces.

    ``"A man's hat."`` -> ``"a man 's hat"``; ``"Don't"`` -> ``"do n't"``; ``"black-and-white"`` and ``"3.5"`` stay
    one token; ``"wait..."`` -> ``"wait"``. Faithful quirks of the official pipeline kept on purpose: brackets become
    ``"-lrb-"``, ``"-rrb-"``, ``"-lsb-"``... (PUNCTUATIONS lists them upper-case, so they are not dropped), runs like
    ``"?!"`` or ``"!!!"`` stay, ``"£"``/``"€"`` become ``"#"``/``"$"``, abbreviations keep their period
    (``"mr."``, ``"u.s."``, ``"st."``) while other words lose it.

    Known differences from the Java tokenizer (none matter for ordinary English captions): SGML/XML entities other
    than ``&amp;``/``&quot;``/dash entities are not decoded; the "acronym before a sentence start" and "abbreviation
    at a sentence end" rules are not ported, as they only add a ``"."`` token that is dropped anyway; Python's
    Unicode letter/digit classes and ``str.lower`` stand in for Java's (rare scripts, dotted capital I); untokenizable
    characters (control or unassigned) are deleted silently; and a tokenization quirk that depends on a caption being
    the very last line of the Java input is modelled as if every caption were followed by a newline.
    """
    text = text.replace("\n", " ")  # as PTBTokenizer.tokenize does (-preserveLines: one output line per caption)
    tokens = (t.lower() for t in _lex(text))
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


# --------------------------------------------------------------------------------------------------------------------
# Java detection and tokenization of many captions
# --------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """True when a ``java`` on PATH runs (``java -version`` succeeds): pycocoevalcap's tokenizer, METEOR and SPICE
    need it. Cached: asked once per process."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        return subprocess.run([java, "-version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# Characters the Java lexer treats as line ends: with -preserveLines they would split one caption into two output lines
# and shift every later caption onto the wrong image in pycocoevalcap's PTBTokenizer.
_LINE_BREAKS = re.compile("[\r\n\u2028\u2029\u000B\u000C\u0085]")


def tokenize_captions(captions: Mapping[Hashable, list[str]], use_java: bool) -> dict[Hashable, list[str]]:
    """key -> tokenized captions, in order: pycocoevalcap's Java ``PTBTokenizer`` when ``use_java``, else
    :func:`python_ptb_tokenize`. Line-break characters are replaced by spaces first (see ``_LINE_BREAKS``)."""
    if not use_java:
        return {k: [python_ptb_tokenize(c) for c in caps] for k, caps in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = [k for k, caps in captions.items() if caps]
    tokenized = PTBTokenizer().tokenize(
        {k: [{"caption": _LINE_BREAKS.sub(" ", c)} for c in captions[k]] for k in keys}
    )
    out = {k: [] for k in captions}
    for k in keys:
        got = tokenized.get(k, [])
        if len(got) != len(captions[k]):
            raise RuntimeError(f"PTBTokenizer returned {len(got)} captions for {k!r}, expected {len(captions[k])}")
        out[k] = got
    return out


# --------------------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------------------
_warned_no_java = False


def _check_inputs(candidates: Mapping[Hashable, str], references: Mapping[Hashable, list[str]]):
    missing = [k for k in references if k not in candidates]
    extra = [k for k in candidates if k not in references]
    if missing or extra:
        raise ValueError(
            f"candidates and references must have the same ids: {len(missing)} without a candidate "
            f"{missing[:10]}, {len(extra)} without references {extra[:10]}"
        )
    for k, caption in candidates.items():
        if not isinstance(caption, str):
            raise ValueError(f"the candidate for id {k!r} is a {type(caption).__name__}, not a caption string")
    for k, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"id {k!r} has no reference captions (a non-empty list of strings is needed)")
        for ref in refs:
            if not isinstance(ref, str):
                raise ValueError(f"a reference caption of id {k!r} is a {type(ref).__name__}, not a string")


def require_pycocoevalcap() -> None:
    """Raise an ImportError that says how to install pycocoevalcap (the setup.py extra "caption"): the caption
    metrics need it, grounding and VQA do not, so ``make demo`` leaves its 100 MB out."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the COCO caption metrics need pycocoevalcap, which is not installed: pip install 'pycocoevalcap>=1.2' "
            "(or `pip install glip_d2[caption]`; tools/install_env.sh installs it unless EXTRAS leaves out 'caption')"
        ) from e


def score_captions(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, list[str]],
    use_java: bool | None = None,
    spice: bool = False,
) -> dict[str, float]:
    """The COCO caption metrics of one candidate caption per id against that id's reference captions, x100.

    Keys: "BLEU_1".."BLEU_4" (corpus BLEU, pycocoevalcap's "closest" reference length), "METEOR" (Java only),
    "ROUGE_L", "CIDEr_D" (pycocoevalcap's ``Cider``; its document frequencies come from these references, so it is a
    corpus-level score: evaluate the whole split at once), and "SPICE" (only with ``spice=True`` and Java; the first
    run downloads Stanford CoreNLP models into pycocoevalcap's folder). ``use_java``: None = use Java when
    :func:`java_available`; without Java the tokenizer is :func:`python_ptb_tokenize` and METEOR/SPICE are skipped.
    """
    global _warned_no_java
    require_pycocoevalcap()
    _check_inputs(candidates, references)
    if not references:
        raise ValueError("no captions to score")
    if use_java is None:
        use_java = java_available()
    if not use_java and not _warned_no_java:
        _warned_no_java = True
        logger.warning("Java is not used (not found, or use_java=False): captions are tokenized by glip_d2's Python "
                       "port of PTBTokenizer and METEOR/SPICE are skipped (BLEU, ROUGE-L, CIDEr-D are computed)")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = tokenize_captions({k: [candidates[k]] for k in references}, use_java)
    gts = tokenize_captions({k: list(v) for k, v in references.items()}, use_java)

    results = OrderedDict()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # Bleu prints its stats; SPICE/METEOR wrappers may print too
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, value in enumerate(bleu, start=1):
            results[f"BLEU_{n}"] = 100.0 * float(value)
        if use_java:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()  # a Java process, ended by Meteor.__del__ when this reference goes
            try:
                results["METEOR"] = 100.0 * float(meteor.compute_score(gts, res)[0])
            except BaseException:
                meteor.meteor_p.kill()  # compute_score leaves its lock held on error: __del__ would then hang
                if meteor.lock.locked():
                    meteor.lock.release()
                raise
            finally:
                del meteor
        results["ROUGE_L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        results["CIDEr_D"] = 100.0 * float(Cider().compute_score(gts, res)[0])
        if spice and use_java:
            from pycocoevalcap.spice.spice import Spice

            results["SPICE"] = 100.0 * float(Spice().compute_score(gts, res)[0])
    if spice and not use_java:
        logger.warning("SPICE needs Java: skipped")
    return dict(results)

