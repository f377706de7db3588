"""Arithmetic in a conversation: which requests need the calculator, and the expression to give it.

A 135M model asked to write the calculator's ``expression`` itself writes "12.125, 12.125, ..."
or rewrites the numbers; the request has already written it. So the calculator's argument is
held to the expressions found here (``ToolSpec.choices``), read from:

* the request itself: "What is (12 + 7) * 3?" → ``(12 + 7) * 3``; word operators become symbols
  ("15 plus 27" → ``15 + 27``), "12% of 250" stays as the calculator reads it;
* a follow-up and the turn before it: "And double it?" after an answer of 42 → ``42 * 2``.

"-", "/" and "x" count as operators only with spaces around them, so dates ("2026-12-03",
"12/25/2026"), phone numbers and sizes ("1920x1080") are not sums.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from slmflow.runtime.messages import Message

_NUMBER = r"-?\d+(?:\.\d+)?"
_N = f"({_NUMBER})"
# Arithmetic said in words, and the same in symbols (each pattern with its replacement).
_PHRASES = [(rf"\b(?:add|sum of)\s+{_N}\s+(?:and|to|plus)\s+{_N}", r"\1 + \2"),
            (rf"\bsubtract\s+{_N}\s+from\s+{_N}", r"\2 - \1"),
            (rf"\bmultiply\s+{_N}\s+(?:by|and|with)\s+{_N}", r"\1 * \2"),
            (rf"\bproduct of\s+{_N}\s+and\s+{_N}", r"\1 * \2"),
            (rf"\bdivide\s+{_N}\s+by\s+{_N}", r"\1 / \2"),
            (rf"{_N}\s+squared\b", r"\1 ** 2"), (rf"{_N}\s+cubed\b", r"\1 ** 3"),
            (rf"{_N}\s+to the power of\s+{_N}", r"\1 ** \2"), (rf"\bsquare root of\s+{_N}", r"\1 ** 0.5")]
# Requests that certainly need the calculator (ToolSpec.triggers): two numbers joined by an
# operator (in symbols or words), or a percentage of a number.
ARITHMETIC = "|".join([r"\d\s*(?:[+*^×]|\*\*)\s*\(?\s*-?\d",
                       r"\d\s+(?:-|/|x|plus|minus|times|divided by|multiplied by)\s+\(?\s*-?\d",
                       r"\d\s*(?:%|percent)\s*of\s*\d", *(pattern for pattern, _ in _PHRASES)])
_PRONOUN = r"(?:it|that|this|the result|the answer)"
_LEAD = r"^\W*(?:(?:and|now|then|ok|okay)\W+)?(?:(?:what(?:'s| is)|how much is)\s+)?"
# A short follow-up that works on the previous result: each pattern with what it makes of value v.
_FOLLOW_UPS: list[tuple[str, str]] = [
    (rf"{_LEAD}double(?:\s+{_PRONOUN})?\W*$", "{v} * 2"),
    (rf"{_LEAD}triple(?:\s+{_PRONOUN})?\W*$", "{v} * 3"),
    (rf"{_LEAD}(?:halve(?:\s+{_PRONOUN})?|half(?:\s+of)?(?:\s+{_PRONOUN})?)\W*$", "{v} / 2"),
    (rf"{_LEAD}square(?:d|\s+{_PRONOUN})?\W*$", "{v} ** 2"),
    (rf"{_LEAD}cube(?:d|\s+{_PRONOUN})?\W*$", "{v} ** 3"),
    (rf"{_LEAD}(?:add|plus)\s+(?P<n>{_NUMBER})(?:\s+to\s+{_PRONOUN})?\W*$", "{v} + {n}"),
    (rf"{_LEAD}(?:minus|subtract|take away)\s+(?P<n>{_NUMBER})(?:\s+from\s+{_PRONOUN})?\W*$", "{v} - {n}"),
    (rf"{_LEAD}(?:times|multiplied by|multiply (?:{_PRONOUN}\s+)?by)\s+(?P<n>{_NUMBER})\W*$", "{v} * {n}"),
    (rf"{_LEAD}(?:divided by|divide (?:{_PRONOUN}\s+)?by)\s+(?P<n>{_NUMBER})\W*$", "{v} / {n}"),
    (rf"{_LEAD}(?P<n>{_NUMBER})\s*(?:%|percent)\s+of\s+{_PRONOUN}\W*$", "{n}% of {v}"),
]
# The same follow-ups as one trigger pattern (ToolSpec.triggers is one regular expression).
FOLLOW_UP = "|".join(f"(?:{pattern.replace('(?P<n>', '(?:')})" for pattern, _ in _FOLLOW_UPS)

_WORD_OPERATORS = [(r"\s+plus\s+", " + "), (r"\s+minus\s+", " - "), (r"\s+(?:times|multiplied by)\s+", " * "),
                   (r"\s+divided by\s+", " / "), (r"(?<=\d)\s+x\s+(?=[\d(])", " * "), (r"\s*percent\s+of\s+", "% of "),
                   (r"(?<=\d),(?=\d{3}\b)", "")]
# A run of numbers, operators, parentheses and "% of" (the candidates are then checked one by one).
_RUN = re.compile(r"[(\d][\d\s.()+\-*/%^×]*(?:of[\d\s.()+\-*/%^×]*)*")
_PERCENT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*(?:%|percent)\s*of\s*")


def python_form(expression: str) -> str:
    """``expression`` in Python's syntax: "12% of 250" → "(12 / 100) * 250", "×" → "*", "^" → "**";
    a stray closing comma dropped (small models end arguments with one; "1 * 2," is no tuple)."""
    text = _PERCENT_OF.sub(r"(\1 / 100) * ", expression).replace("×", "*").replace("^", "**")
    return text.strip().rstrip(",;").strip()


def _parses(expression: str) -> bool:
    try:
        ast.parse(python_form(expression), mode="eval")
    except SyntaxError:
        return False
    return True


def expressions_in(text: str) -> list[str]:
    """The arithmetic expressions written in ``text``, as the calculator reads them."""
    for pattern, symbol in _PHRASES:
        text = re.sub(pattern, symbol, text, flags=re.IGNORECASE)
    for pattern, symbol in _WORD_OPERATORS:
        text = re.sub(pattern, symbol, text, flags=re.IGNORECASE)
    found = []
    for match in _RUN.finditer(text):
        expression = match.group().strip().rstrip(".").strip()
        while expression.count(")") > expression.count("(") and expression.endswith(")"):
            expression = expression[:-1].rstrip()  # "(that is 3 * 4)" closes a sentence's bracket
        if re.search(ARITHMETIC, expression) and _parses(expression):
            found.append(expression)
    return found


def previous_value(messages: Sequence[Message]) -> str | None:
    """The number the conversation ended on before its last user message: the last one in the
    latest tool result or assistant reply that has one (what "it" refers to in "double it")."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=0)
    for message in reversed(messages[:last_user]):
        if message.role in ("tool", "assistant"):
            numbers = re.findall(_NUMBER, message.content or "")
            if numbers:
                return numbers[-1]
    return None


def follow_up_expression(request: str, value: str) -> str | None:
    """The expression a follow-up such as "And double it?" asks for, applied to ``value``."""
    v = f"({value})" if value.startswith("-") else value
    for pattern, template in _FOLLOW_UPS:
        match = re.search(pattern, request.strip(), re.IGNORECASE)
        if match:
            return template.format(v=v, **match.groupdict())
    return None


def expression_choices(messages: Sequence[Message]) -> dict[str, list[str]]:
    """The calculator's ``choices``: the expressions of the last user message, or, for a
    follow-up, the one it makes of the previous result (none found: the argument stays free)."""
    users = [m for m in messages if m.role == "user"]
    if not users:
        return {"expression": []}
    request = users[-1].content or ""
    found = expressions_in(request)
    if not found:
        value = previous_value(messages)
        expression = follow_up_expression(request, value) if value is not None else None
        found = [expression] if expression else []
    return {"expression": found}
