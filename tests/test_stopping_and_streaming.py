"""Stop strings across token boundaries, streaming, limits and usage."""

from __future__ import annotations

import pytest
from slmflow.runtime.constraints import Grammar, Regex
from slmflow.runtime.stopping import LoopDetector, StopStringMatcher

PROMPT = "Write a short poem about autumn leaves."


def test_matcher_holds_back_a_partial_stop_and_cuts_at_the_match():
    m = StopStringMatcher(["END"])
    assert m.feed("abc E") == "abc "
    assert m.feed("N") == ""
    assert m.feed("Dxyz") == ""
    assert m.stopped


def test_matcher_releases_held_text_that_was_not_a_stop():
    m = StopStringMatcher(["END"])
    assert m.feed("abcEN") == "abc"
    assert m.feed("x") == "ENx"
    assert m.feed("E") == ""
    assert m.flush() == "E"
    assert not m.stopped


def test_loop_detector_needs_a_long_repeating_tail():
    detector = LoopDetector(max_period=8, min_repeats=4, min_span=24)
    counting = [t for n in range(100) for t in (n, 7)]  # "1. 1\n2. 2\n...": similar, never the same
    assert not any(detector.feed(t) for t in counting)
    detector = LoopDetector(max_period=8, min_repeats=4, min_span=24)
    fired = [detector.feed(t) for t in [1, 2, 3, 4, 5, 6] * 5]
    assert fired.index(True) == 23 and detector.period == 6  # 24 tokens = 4 repeats of the block


def test_loop_detector_agrees_with_a_brute_force_check_token_by_token():
    import random

    def looping(tokens, max_period=6, min_repeats=3, min_span=12):
        for k in range(1, min(max_period, len(tokens) - 1) + 1):
            span = k  # length of the suffix with period k
            while span < len(tokens) and tokens[-1 - span] == tokens[-1 - span + k]:
                span += 1
            if span >= max(min_span, min_repeats * k):
                return True
        return False

    rng = random.Random(0)
    verdicts = []
    for _ in range(20):
        detector = LoopDetector(max_period=6, min_repeats=3, min_span=12)
        tokens = [rng.randrange(4) for _ in range(6)]
        for t in tokens:
            detector.feed(t)
        while len(tokens) < 400:  # stretches that repeat a block (lag 1-6, with slips), then change
            lag, length = rng.randint(1, 6), rng.randint(5, 40)
            for _ in range(length):
                tokens.append(tokens[-lag] if rng.random() < 0.95 else rng.randrange(4))
                verdicts.append(detector.feed(tokens[-1]))
                assert verdicts[-1] == looping(tokens), tokens
    assert 0.1 < sum(verdicts) / len(verdicts) < 0.9  # both answers were checked, many times


def test_a_looping_reply_stops_early_as_a_prefix_of_the_full_reply(onnx_model):
    prompt = "Write the letter a 300 times."  # the embedded model loops on this under greedy
    full = onnx_model.generate(prompt, max_tokens=200, stop_on_loops=False).result()
    cut = onnx_model.generate(prompt, max_tokens=200).result()
    assert full.finish_reason == "length" and len(full.token_ids) == 200
    assert cut.finish_reason == "stop" and 64 <= len(cut.token_ids) < 200
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert full.text.startswith(cut.text)


def test_a_loop_under_a_constraint_is_cut_only_where_the_output_is_complete(onnx_model):
    free_text = Grammar("start: text\ntext: /[\\s\\S]+/\n")  # complete after any character
    cut = onnx_model.generate("Write the letter a 300 times.", max_tokens=200, constraint=free_text).result()
    assert cut.finish_reason == "stop" and len(cut.token_ids) < 200
    exact = onnx_model.generate("Say ab many times.", max_tokens=200, constraint=Regex("(ab){70}"),
                                jump_forward=False).result()
    assert exact.text == "ab" * 70  # a loop the constraint demands, complete only at its end


def _spanning_stop(model, token_ids: list[int], full_text: str) -> str:
    """A stop string that starts inside one token's text and ends inside a later one's."""
    tok = model.tokenizer
    for i in range(3, len(token_ids) - 2):
        before = tok.decode(token_ids[:i])
        piece = tok.decode(token_ids[i : i + 2])
        if len(piece.strip()) >= 4 and full_text.startswith(before) and before:
            start = len(before) - 1
            stop = full_text[start : len(before) + len(piece) - 1]
            if full_text.find(stop) == start:
                return stop
    raise AssertionError("no spanning stop string found")


def test_stop_string_spanning_tokens_is_cut_exactly_and_never_emitted(onnx_model):
    full = onnx_model.generate(PROMPT, max_tokens=60).result()
    stop = _spanning_stop(onnx_model, full.token_ids, full.text)
    response = onnx_model.generate(PROMPT, max_tokens=60, stop=[stop])
    deltas = list(response)
    result = response.result()
    assert result.text == full.text[: full.text.find(stop)]
    assert "".join(deltas) == result.text
    assert result.finish_reason == "stop"


def test_streaming_deltas_concatenate_to_the_final_text(hf_model):
    response = hf_model.generate(PROMPT, max_tokens=50)
    deltas = list(response)
    assert len(deltas) > 5
    assert "".join(deltas) == response.result().text
    assert "".join(response) == response.text()  # iterating again replays


def test_max_tokens_limits_the_output_and_reports_length(onnx_model):
    result = onnx_model.generate(PROMPT, max_tokens=7).result()
    assert len(result.token_ids) == 7
    assert result.finish_reason == "length"


def test_eos_ends_generation_with_stop(onnx_model):
    result = onnx_model.generate("What is the capital of France?", max_tokens=100).result()
    assert result.finish_reason == "stop"
    assert result.token_ids[-1] in onnx_model.tokenizer.eos_token_ids


def test_usage_counts_tokens_and_times(onnx_model):
    result = onnx_model.generate(PROMPT, max_tokens=20).result()
    usage = result.usage
    assert usage.prompt_tokens == len(onnx_model.prompt_ids(PROMPT))
    assert usage.completion_tokens == len(result.token_ids) == 20
    assert 0 < usage.time_to_first_token_s < usage.total_s
    assert usage.decode_tokens_per_s > 0


def test_combined_usage_adds_counts_and_rates_decoding_over_all_steps():
    from slmflow.runtime.loop import Usage

    a = Usage(prompt_tokens=10, completion_tokens=11, time_to_first_token_s=0.5, decode_tokens_per_s=10.0, total_s=1.5)
    b = Usage(prompt_tokens=20, completion_tokens=21, time_to_first_token_s=0.1, decode_tokens_per_s=20.0, total_s=1.1)
    both = Usage.combined([a, b])
    assert (both.prompt_tokens, both.completion_tokens, both.total_s) == (30, 32, 2.6)
    assert both.decode_tokens_per_s == 30 / 2.0  # 10 + 20 decoded tokens over 1.0 + 1.0 s of decoding


def test_sampled_rate_leaves_forced_tokens_out(onnx_model):
    """A reply the constraint mostly forces: the sampled rate counts only what the model chose, so
    a trace never shows tens of thousands of tokens a second for a copied quote."""
    from slmflow.runtime.constraints import JsonSchema
    from slmflow.runtime.loop import Usage

    made = Usage(prompt_tokens=5, completion_tokens=34, forced_tokens=30, time_to_first_token_s=0.1,
                 decode_tokens_per_s=3300.0, total_s=0.11)
    assert made.sampled_tokens_per_s == pytest.approx(3 / 0.01)
    assert Usage(prompt_tokens=5, completion_tokens=31, forced_tokens=30, time_to_first_token_s=0.1,
                 decode_tokens_per_s=3000.0, total_s=0.11).sampled_tokens_per_s == 0.0
    schema = {"type": "object", "properties": {"customer_shipping_destination_city": {"type": "string", "maxLength": 8}},
              "required": ["customer_shipping_destination_city"], "additionalProperties": False}
    usage = onnx_model.generate("Ship to Oslo. JSON.", constraint=JsonSchema(schema), max_tokens=40).result().usage
    assert usage.forced_tokens > 0
    chosen = usage.completion_tokens - usage.forced_tokens - 1
    assert usage.sampled_tokens_per_s == pytest.approx(chosen / (usage.total_s - usage.time_to_first_token_s))
    assert usage.sampled_tokens_per_s < usage.decode_tokens_per_s


def test_a_long_sentence_said_over_and_over_ends_within_200_tokens():
    sentence = list(range(100, 160))  # a 60-token sentence, longer than any short block
    detector = LoopDetector()
    fired = [detector.feed(t) for t in sentence * 10]
    assert fired.index(True) < 200 and detector.period == 60
