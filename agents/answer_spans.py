"""What shape an answer takes, and which pieces of an evidence sentence may be it.

A polar question ("Did ...?", "Is ...?") is answered Yes or No (agents/polar.py decides which). A
wh-question is answered by the shortest piece of the evidence that answers it, quoted verbatim:

* the question's own words are cut out of the sentence first — an answer rarely repeats its
  question ("When did he become a professor?" → "In 1820 he became a professor of physics" leaves
  "In 1820" and "of physics at the University of Turin");
* pieces are then preferred by the question's kind: a year or date for "when", a number for "how
  many", capitalised names for "who"/"where"; where no piece fits the kind, every piece stays.

The model then picks among those pieces under a :class:`~slmflow.runtime.constraints.Quote`, so
what it writes is always a verbatim part of one of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum

POLAR_START = re.compile(r"^(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should|shall|may|"
                         r"might|must|isn't|aren't|wasn't|weren't|doesn't|didn't)\b", re.IGNORECASE)


class QuestionKind(str, Enum):
    POLAR = "polar"
    TIME = "time"
    NUMBER = "number"
    NAME = "name"
    OTHER = "other"


_KIND_RULES: list[tuple[re.Pattern, QuestionKind]] = [
    (re.compile(r"\b(when|what year|which year|what date|what century|what decade|in what year)\b", re.I),
     QuestionKind.TIME),
    (re.compile(r"\bhow (many|much|old|long|far|tall|high|big|large|deep|wide|heavy|fast)\b", re.I),
     QuestionKind.NUMBER),
    (re.compile(r"^\s*(who|whom|whose|where|which)\b|\b(who|whom) (is|was|were|are|did)\b", re.I),
     QuestionKind.NAME),
]

_KIND_PATTERNS = {
    QuestionKind.TIME: re.compile(r"\b(1[0-9]{3}|20[0-9]{2}|[0-9]{1,2}(st|nd|rd|th)? century|January|February|March|"
                                  r"April|May|June|July|August|September|October|November|December)\b"),
    QuestionKind.NUMBER: re.compile(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                                    r"twenty|thirty|forty|fifty|hundred|thousand|million|billion|dozen)\b", re.I),
    QuestionKind.NAME: re.compile(r"\b[A-Z][a-z]"),
}

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_NUMBER_WORD = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
                r"hundred|thousand|million|billion|dozen)")
# The smallest text that is a date, a quantity or a name: what a typed question's answer is.
_TYPED_SPANS = {
    QuestionKind.TIME: re.compile(
        rf"\b(?:(?:early|late|mid-?)\s*)?(?:(?:{_MONTH}\s+\d{{1,2}},?\s+|\d{{1,2}}\s+{_MONTH}\s+|{_MONTH},?\s+)?"
        rf"\d{{4}}s?\b|\d{{1,4}}\s*(?:BC|BCE|AD|CE)\b|{_MONTH}\s+\d{{1,2}}\b|\d{{1,2}}(?:st|nd|rd|th)\s+century)"),
    QuestionKind.NUMBER: re.compile(
        rf"(?:[$£€]\s?)?(?:\d+(?:[.,]\d+)*|\b{_NUMBER_WORD}(?:[- ]{_NUMBER_WORD})*\b)"
        rf"(?:\s+(?:hundred|thousand|million|billion|trillion)\b)?(?:\s*%|\s+percent\b|\s+(?!(?:and|or|of|in|to|the|a|an|by|"
        rf"for|from|with|at|on|is|was|were|are)\b)[a-zA-Z][\w-]*)?", re.IGNORECASE),
    QuestionKind.NAME: re.compile(r"\b[A-Z](?:\.|[\w'-]*)(?:\s+(?:(?:of|de|da|di|von|van|der|the|la|le|du|del|y)\s+)?"
                                  r"[A-Z](?:\.|[\w'-]*))*"),
}
_MONTH_ONLY = re.compile(_MONTH)
_WORD = re.compile(r"\w+")
# Words that carry no answer on their own: a piece is trimmed of them at both ends.
_EDGE_WORDS = frozenset("""a an the and or but of in on at to for from by with as is was were are be been being
has have had that which who whom whose this these those it its he she they his her their there then than also
after before during while into onto about over under when where what how why""".split())


def question_kind(question: str) -> QuestionKind:
    """Polar when the question opens with an auxiliary verb, else the first wh-rule that matches."""
    text = question.strip()
    if POLAR_START.match(text):
        return QuestionKind.POLAR
    for pattern, kind in _KIND_RULES:
        if pattern.search(text):
            return kind
    return QuestionKind.OTHER


def answer_pieces(sentence: str, question_terms: set[str], stem: Callable[[str], set[str]],
                  kind: QuestionKind) -> list[tuple[int, int]]:
    """Character ranges of ``sentence`` that may hold the answer: the runs of words between the
    question's words (``stem`` maps a word to its index terms, empty for a stop word), trimmed of
    edge words and of punctuation at their ends; those that fit ``kind`` when any does."""
    words = list(_WORD.finditer(sentence))
    runs: list[list[re.Match]] = [[]]
    for word in words:
        if stem(word.group()) & question_terms:
            runs.append([])
        else:
            runs[-1].append(word)
    pieces = []
    for run in runs:
        while run and run[0].group().lower() in _EDGE_WORDS:
            run = run[1:]
        while run and run[-1].group().lower() in _EDGE_WORDS:
            run = run[:-1]
        if run:
            pieces.append((run[0].start(), run[-1].end()))
    typed = [(a, b) for a, b in pieces if fits_kind(sentence[a:b], kind)]
    return typed or pieces


def typed_spans(sentence: str, kind: QuestionKind, question_terms: set[str],
                stem: Callable[[str], set[str]]) -> list[tuple[int, int]]:
    """The smallest spans of ``sentence`` that are what ``kind`` asks for (a date, a number with
    its unit, a capitalised name), in sentence order; none for ``OTHER`` and ``POLAR``. A span
    may hold question words ("Gustave Eiffel" for "Who designed the Eiffel Tower?") but not only
    them: the question's own "1816" is no answer to "How old was he in 1816?"."""
    pattern = _TYPED_SPANS.get(kind)
    if pattern is None:
        return []
    spans = []
    for m in pattern.finditer(sentence):
        words = [w for w in _WORD.findall(m.group()) if w.lower() not in _EDGE_WORDS]
        if words and not _MONTH_ONLY.fullmatch(m.group()) and any(not (stem(w) & question_terms) for w in words):
            spans.append((m.start(), m.end()))
    return spans


def fits_kind(text: str, kind: QuestionKind) -> bool:
    """Whether ``text`` has what a question of ``kind`` asks for (any text fits ``OTHER``)."""
    pattern = _KIND_PATTERNS.get(kind)
    return pattern is None or pattern.search(text) is not None
