"""Follow-up questions in a conversation: what a question that points back ("When was it
built?") needs from the turn before it to be searched on its own."""

from __future__ import annotations

import re
from collections.abc import Sequence

from slmflow.runtime.messages import Message, as_messages

_POINTS_BACK = re.compile(r"\b(?:it|its|they|them|their|he|him|his|she|her|that|this|these|those|there)\b",
                          re.IGNORECASE)
# A name: capitalised words in a row, with the small words that join them ("Bank of England").
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of|the|de|du|von|van|and)?\s*[A-Z][\w'-]*)*")
LOOK_BACK = 3  # earlier user turns searched for a name
_QUESTION_WORDS = {"what", "who", "whom", "whose", "when", "where", "which", "why", "how", "is", "are", "was",
                   "were", "do", "does", "did", "can", "could", "and", "tell", "show"}


def antecedent(turn: str) -> str | None:
    """What an earlier question was about, for a pronoun to stand for: its longest name
    ("How tall is the Eiffel Tower?" → "the Eiffel Tower"), None when it names nothing."""
    names = []
    for match in _NAME.finditer(turn):
        words = match.group().split()
        while words and words[0].lower() in _QUESTION_WORDS:  # "How", "What" open the sentence
            words = words[1:]
        if words:
            start = match.end() - len(" ".join(words))
            article = "the " if turn[max(0, start - 4):start].lower() == "the " else ""
            names.append(article + " ".join(words))
    return max(names, key=len) if names else None


def with_antecedent(question: str, history: Sequence[Message | dict]) -> str:
    """``question`` as retrieval needs it in a conversation: in a follow-up that points back, the
    first pronoun stands for what the latest of the last LOOK_BACK questions to name something
    named ("When was it completed?" after "How tall is the Eiffel Tower?" → "When was the Eiffel
    Tower completed?"); when none did, the previous question goes before it. A question without
    a pronoun stands alone. Only the name is carried, not the whole question, whose words
    ("tall") would pull the search back to the answer already given."""
    match = _POINTS_BACK.search(question)
    earlier = [m.content for m in as_messages(history) if m.role == "user" and m.content.strip()]
    if match is None or not earlier:
        return question
    # The latest earlier question that named something: "Who designed it?" after "When was it
    # completed?" after "How tall is the Eiffel Tower?" still means the tower.
    name = next((n for n in map(antecedent, reversed(earlier[-LOOK_BACK:])) if n is not None), None)
    if name is None:
        return f"{earlier[-1].strip()} {question}"
    possessive = "'s" if match.group().lower() in ("its", "his", "her", "their") else ""
    return question[:match.start()] + name + possessive + question[match.end():]
