"""Quote constraints, prompt-lookup speculation and evidence ranking (wave 2, issue 23)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slmflow.agents.answer_spans import QuestionKind, answer_pieces, question_kind, typed_spans
from slmflow.agents.docs_qa import pick_piece
from slmflow.agents.polar import YES_THRESHOLD, polar_features
from slmflow.runtime.constraints import Quote
from slmflow.runtime.speculation import PromptLookup

SOURCE = "Lincoln was born on February 12, 1809, in southeast Hardin County, Kentucky."


@given(st.integers(0, 40), st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_every_word_aligned_span_of_the_source_is_located_verbatim(first, length):
    words = list(re.finditer(r"\w+|[^\w\s]", SOURCE))
    first %= len(words)
    last = min(first + length, len(words)) - 1
    span = SOURCE[words[first].start():words[last].end()]
    found = Quote([SOURCE]).locate(span)
    assert found is not None and SOURCE[found.start:found.end] == span


@pytest.mark.parametrize("text", ["Lincoln was born in Ohio", "incoln was", "Hardin County, Ohio", "born  on"])
def test_text_that_is_not_a_word_aligned_piece_of_the_source_is_refused(text):
    assert Quote([SOURCE]).locate(text) is None


def test_a_near_quote_snaps_to_the_closest_source_span():
    span = Quote([SOURCE]).snap("born on February 12 1809 in Hardin County")
    assert span is not None and SOURCE[span.start:span.end] == "born on February 12, 1809, in southeast Hardin County"
    assert span.similarity < 1.0


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    drafter = PromptLookup([5, 6, 7, 8, 9, 10, 1, 2, 5, 6])
    assert drafter.propose() == [7, 8, 9, 10, 1, 2, 5, 6]


def test_prompt_lookup_proposes_nothing_without_a_match():
    assert PromptLookup([1, 2, 3, 4]).propose() == []


@pytest.mark.parametrize(("question", "kind"), [
    ("Did Lincoln sign the act?", QuestionKind.POLAR), ("When did he become a professor?", QuestionKind.TIME),
    ("How many provinces does Canada have?", QuestionKind.NUMBER), ("Who assassinated Lincoln?", QuestionKind.NAME),
    ("What is the study of beetles called?", QuestionKind.OTHER)])
def test_question_kinds(question, kind):
    assert question_kind(question) == kind


def test_answer_pieces_leave_out_the_questions_words_and_prefer_the_asked_kind():
    sentence = "In 1820 he became a professor of physics at the University of Turin."
    pieces = [sentence[a:b] for a, b in answer_pieces(sentence, {"became", "professor"}, lambda w: {w.lower()},
                                                      QuestionKind.TIME)]
    assert pieces == ["1820"]


@pytest.mark.parametrize(("sentence", "kind", "question_words", "spans"), [
    ("Construction began in January 1887 and was finished in March 1889.", QuestionKind.TIME, set(),
     ["January 1887", "March 1889"]),
    ("Lincoln was just seven years old when, in 1816, the family moved.", QuestionKind.NUMBER, {"1816"},
     ["seven years"]),
    ("Revenue was $11,588.00, or 13.2 billion dollars.", QuestionKind.NUMBER, set(),
     ["$11,588.00", "13.2 billion dollars"]),
    ("It is named after the engineer Gustave Eiffel, whose company built it.", QuestionKind.NAME, {"eiffel"},
     ["Gustave Eiffel"]),
])
def test_typed_spans_are_the_dates_numbers_and_names_outside_the_question(sentence, kind, question_words, spans):
    found = typed_spans(sentence, kind, question_words, lambda w: {w.lower()})
    assert [sentence[a:b] for a, b in found] == spans


def test_rule_picks_the_first_quantity_and_the_fullest_name():
    sentence = "Brazil is first, ahead of Vietnam and James G. Blaine of Maine, with 2.5 million bags and 3 more."
    names = typed_spans(sentence, QuestionKind.NAME, set(), lambda w: {w.lower()})
    a, b = pick_piece(sentence, names, QuestionKind.NAME)
    assert sentence[a:b] == "James G. Blaine of Maine"
    numbers = typed_spans(sentence, QuestionKind.NUMBER, set(), lambda w: {w.lower()})
    a, b = pick_piece(sentence, numbers, QuestionKind.NUMBER)
    assert sentence[a:b] == "2.5 million bags"


def test_polar_score_says_no_to_a_claim_its_evidence_negates():
    question = "Is Liechtenstein heavily urbanized?"
    terms = {"liechtenstein", "heavili", "urban"}
    agreeing = polar_features(question, "Liechtenstein is heavily urbanized.", "Liechtenstein", 1.0, 0.9, terms,
                              terms)
    negated = polar_features(question, "Despite this, it is not heavily urbanized.", "Liechtenstein", 1.0, 0.9,
                             terms, terms)
    assert agreeing.probability_yes() >= YES_THRESHOLD > negated.probability_yes()


@pytest.mark.slow
def test_greedy_output_is_identical_with_and_without_speculation(hf_model):
    model = hf_model
    prompt = f"Repeat exactly: {SOURCE} {SOURCE}"
    with_guess = model.generate(prompt, max_tokens=48, speculate=True).result()
    without = model.generate(prompt, max_tokens=48, speculate=False).result()
    assert with_guess.token_ids == without.token_ids
    assert without.usage.speculated_tokens == 0


@pytest.mark.slow
def test_a_quote_constrained_generation_is_a_verbatim_piece_of_its_source(onnx_model):
    text = onnx_model.generate(f"Where was Lincoln born? {SOURCE}", constraint=Quote([SOURCE]),
                                   max_tokens=30).text()
    assert text.strip() and Quote([SOURCE]).locate(text) is not None
