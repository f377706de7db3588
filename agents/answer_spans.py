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
    (re.compile(r"^\s*(who|whom|whose|where)\b|\b(who|whom) (is|was|were|are|did)\b", re.I), QuestionKind.NAME),
]

_KIND_PATTERNS = {
    QuestionKind.TIME: re.compile(r"\b(1[0-9]{3}|20[0-9]{2}|[0-9]{1,2}(st|nd|rd|th)? century|January|February|March|"
                                  r"April|May|June|July|August|September|October|November|December)\b"),
    QuestionKind.NUMBER: re.compile(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                                    r"twenty|thirty|forty|fifty|hundred|thousand|million|billion|dozen)\b", re.I),
    QuestionKind.NAME: re.compile(r"\b[A-Z][a-z]"),
}

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


def fits_kind(text: str, kind: QuestionKind) -> bool:
    """Whether ``text`` has what a question of ``kind`` asks for (any text fits ``OTHER``)."""
    pattern = _KIND_PATTERNS.get(kind)
    return pattern is None or pattern.search(text) is not None
