"""Yes or No to a polar question, decided over its quoted evidence by a calibrated score.

Asking a 135M model to write "Yes" or "No" gives its prior, which is nearly always "Yes" (on
wikiqa dev 385 of 487 polar questions are "yes", so that prior scores well and tells nothing).
Here the decision is a logistic score over signals that a false statement leaves in its evidence:

* ``coverage``: the IDF-weighted share of the question's content words the evidence holds. A
  false question is often a true one with a word swapped ("Is Volta Dutch?").
* ``missing_words``: the share of the question's content words (stemmed, unweighted) that the
  evidence and its title lack; unlike coverage, a common word swapped ("first" for "sixteenth")
  counts as much as a rare one.
* ``missing_numbers`` / ``missing_names``: the share of the question's numbers and capitalised
  names that the evidence (and its document's title) lacks.
* ``negation``: one of question and evidence is negated ("not", "never", "no") and the other not.
* ``absolute``: the question says "all", "every", "only", "always", "never" (or a superlative)
  and the evidence does not say the same word: a claim stronger than its source.
* ``hedged``: the evidence hedges ("one of", "some", "most", "many", "several") where the
  question does not: "Is Egypt the most populated country?" over "Egypt is one of the most
  populous countries".

No signal from the 135M model made the cut: its log-odds of "Yes" over "No" given the evidence,
calibrated against a content-free input ("N/A"; Zhao et al. 2021), averaged 1.01 on yes questions
and 1.09 on no questions of the fit half; the gain in probability the evidence gives the
question's own tokens (pointwise mutual information, lowest token and mean) did not separate them
either (-2.16 vs -2.21, 2.40 vs 2.42 on 30 + 30 questions). A larger model plugged in through the
same code may carry such a signal; the fit script is how to find out.

The weights below were fitted by ``bench/fit_docs_qa.py`` on the *fit* half of the wikiqa dev
questions (those whose article id hashes even) and are reported on the other half; see
bench/RESULTS.md. They are a method's constants, not per-question choices.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass



_NUMBER = re.compile(r"\d+(?:[.,]\d+)*|\b(?:(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)-)?(?:one|two|three|"
                     r"four|five|six|seven|eight|nine|ten|eleven|twelve|first|second|third|fourth|fifth|sixth|"
                     r"seventh|eighth|ninth|tenth|eleventh|twelfth|hundred|thousand|million|billion)\b",
                     re.IGNORECASE)
_NAME = re.compile(r"\b[A-Z][\w'-]*")
_ABSOLUTE = re.compile(r"\b(all|every|only|always|never|none|any|entirely|completely|most|least|\w+est)\b",
                       re.IGNORECASE)
_HEDGE = re.compile(r"\b(one of|some|many|several|most|often|usually|sometimes|partly|mostly|nearly|almost)\b",
                    re.IGNORECASE)
_NEGATION = re.compile(r"\b(not|never|no|none|neither|nor|n't|cannot)\b|n't\b", re.IGNORECASE)

# Fitted by bench/fit_docs_qa.py (fit half of wikiqa dev); order as in PolarFeatures.
WEIGHTS = {"coverage": 0.526, "similarity": 1.454, "missing_words": -1.532, "missing_numbers": -0.54,
           "missing_names": -0.493, "negation": -1.365, "absolute": -0.398, "hedged": -0.733}
BIAS = 0.215
#: "Yes" when the score's probability is at least this: the threshold that maximised accuracy plus
#: balanced accuracy on the fit half (yes is 78.5% of it, so 0.5 would say Yes almost always).
YES_THRESHOLD = 0.7


@dataclass(frozen=True)
class PolarFeatures:
    coverage: float
    similarity: float
    missing_words: float
    missing_numbers: float
    missing_names: float
    negation: float
    absolute: float
    hedged: float

    def probability_yes(self) -> float:
        z = BIAS + sum(WEIGHTS[name] * value for name, value in asdict(self).items())
        return 1.0 / (1.0 + math.exp(-z))


def _missing(pattern: re.Pattern, question: str, evidence: str, skip_first: bool = False) -> float:
    found = list(pattern.finditer(question))
    if skip_first:  # the question's first word is capitalised as a sentence start, not as a name
        found = [m for m in found if m.start() > 0]
    wanted = {m.group().lower() for m in found}
    if not wanted:
        return 0.0
    have = evidence.lower()
    return sum(w not in have for w in wanted) / len(wanted)


def polar_features(question: str, evidence: str, title: str, coverage: float, similarity: float,
                   question_terms: set[str], evidence_terms: set[str]) -> PolarFeatures:
    """The signals of the module docstring for ``question`` over one evidence sentence (``title``:
    its document's title and heading, which name what "it" and "he" refer to; ``*_terms``: the
    stemmed content words of the question, and of the evidence with its title)."""
    context = f"{title}\n{evidence}"
    negated = bool(_NEGATION.search(question)) != bool(_NEGATION.search(evidence))
    hedges = {m.group().lower() for m in _HEDGE.finditer(evidence)} - {m.group().lower() for m in
                                                                          _HEDGE.finditer(question)}
    missing_words = len(question_terms - evidence_terms) / len(question_terms) if question_terms else 0.0
    return PolarFeatures(coverage=coverage, similarity=similarity, missing_words=missing_words,
                         missing_numbers=_missing(_NUMBER, question, context),
                         missing_names=_missing(_NAME, question, context, skip_first=True),
                         negation=float(negated), absolute=_missing(_ABSOLUTE, question, evidence),
                         hedged=float(bool(hedges)))
