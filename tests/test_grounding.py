"""Quote constraints, prompt-lookup speculation and evidence ranking (wave 2, issue 23)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slmflow.agents.answer_spans import QuestionKind, answer_pieces, question_kind
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
