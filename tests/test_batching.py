"""Many sequences per forward pass (issue #27): the embedded model's scheduler batches concurrent
generations, and each one's output is exactly its solo run's.

Rows of a batched pass of the onnxruntime decoder equal their solo runs bit for bit (measured:
backends/onnx_slots.py), so these tests ask for exact equality, not a tolerance; every test also
checks that passes were in fact shared, so a scheduler that ran sequences one by one fails here.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel
from slmflow.runtime.constraints import JsonSchema
from slmflow.runtime.sampling import SamplingParams
from slmflow.runtime.tool_calling import ToolSpec

QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "List three uses of a paperclip.",
    "Why is the sky blue?",
    "Give me a tip for learning Python.",
    "What do bees make?",
    "Name a famous painter.",
    "How many legs does a spider have?",
]

WEATHER = ToolSpec(name="get_weather", description="The weather in a city now.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


class City(BaseModel):
    name: str
    country: str


def _kinds(model):
    """Sixteen requests of four kinds, each a function returning what a user would compare."""
    def plain(q):
        return lambda: model.generate([{"role": "user", "content": q}], max_tokens=40).text()

    def streamed(q):
        return lambda: "".join(model.generate([{"role": "user", "content": q}], max_tokens=40))

    def schema(q):
        return lambda: model.generate(f"{q} Answer with a city as JSON.", constraint=JsonSchema(City),
                                      max_tokens=60).text()

    def tools(q):
        def run():
            turn = model.tool_turn([{"role": "user", "content": f"{q} And what is the weather in Paris?"}],
                                   [WEATHER], tool_choice="required")
            return [(c.name, c.arguments) for c in turn.tool_calls]
        return run

    makers = [plain, streamed, schema, tools]
    return [makers[i % 4](QUESTIONS[i % len(QUESTIONS)]) for i in range(16)]


def _passes(model):
    scheduler = model.backend.scheduler
    return scheduler.decode_passes, scheduler.batched_rows


def test_sixteen_threads_of_mixed_requests_get_their_solo_outputs(onnx_model):
    jobs = _kinds(onnx_model)
    solo = [job() for job in jobs]
    passes, rows = _passes(onnx_model)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda job: job(), jobs))
    new_passes, new_rows = _passes(onnx_model)
    assert together == solo
    assert (new_rows - rows) / (new_passes - passes) > 2, "passes were not shared"
    assert onnx_model.backend.scheduler.arena.slots == []  # every sequence gave its slot back


def test_sequences_join_and_leave_a_running_batch(onnx_model):
    """A long reply keeps decoding while short ones join after it started and leave before it ends."""
    long_prompt = [{"role": "user", "content": "Write a long story about a dragon who learns to paint."}]
    options = {"max_tokens": 160, "stop_on_loops": False}
    long_solo = onnx_model.generate(long_prompt, **options).text()
    short_solo = {q: onnx_model.generate([{"role": "user", "content": q}], max_tokens=12).text()
                  for q in QUESTIONS[:4]}
    started = threading.Event()
    result = {}

    def long_run():
        pieces = []
        for i, piece in enumerate(onnx_model.generate(long_prompt, **options)):
            pieces.append(piece)
            if i == 10:
                started.set()
        result["long"] = "".join(pieces)

    runner = threading.Thread(target=long_run)
    runner.start()
    assert started.wait(120)
    with ThreadPoolExecutor(4) as pool:
        shorts = dict(zip(QUESTIONS[:4], pool.map(
            lambda q: onnx_model.generate([{"role": "user", "content": q}], max_tokens=12).text(), QUESTIONS[:4])))
    assert runner.is_alive(), "the long reply should still be decoding when the short ones are done"
    runner.join()
    assert shorts == short_solo
    assert result["long"] == long_solo


def test_branches_sharing_a_prefix_prefill_it_once_and_fork(onnx_model):
    shared = "You answer in one short sentence. " * 12
    prompts = [[{"role": "system", "content": shared}, {"role": "user", "content": q}] for q in QUESTIONS[:4]]
    solo = [onnx_model.generate(p, max_tokens=16).text() for p in prompts]
    onnx_model.cache.clear()
    onnx_model.generate(prompts[0], max_tokens=1).text()  # the shared system prompt is cached now
    reused = onnx_model.cache.stats.tokens_reused
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: onnx_model.generate(p, max_tokens=16).text(), prompts))
    assert together == solo
    prefix = len(onnx_model.prompt_ids([{"role": "system", "content": shared}], None))
    assert onnx_model.cache.stats.tokens_reused - reused >= 4 * (prefix - 8), "each branch should reuse the prefix"


def test_a_cancelled_stream_leaves_without_disturbing_the_rest(onnx_model):
    other = [{"role": "user", "content": "Write a short poem about autumn leaves."}]
    other_solo = onnx_model.generate(other, max_tokens=60).text()
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("text", onnx_model.generate(other, max_tokens=60)
                                                                .text()))
    runner.start()
    stream = iter(onnx_model.generate([{"role": "user", "content": "Tell me about the sea."}], max_tokens=200))
    got = [next(stream) for _ in range(3)]
    stream.close()  # the client went away: the sequence leaves at its next step
    runner.join()
    assert len(got) == 3
    assert result["text"] == other_solo
    scheduler = onnx_model.backend.scheduler
    assert scheduler.arena.slots == [] and scheduler._running == 0


def test_sampled_sequences_with_a_seed_repeat_in_a_batch(onnx_model):
    """Sampling stays each sequence's own: a seeded reply is the same alone and beside others."""
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=7)
    prompt = [{"role": "user", "content": "Invent a name for a cat."}]
    alone = onnx_model.generate(prompt, sampling=params, max_tokens=24).text()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: onnx_model.generate(prompt, sampling=params, max_tokens=24).text(),
                                range(4)))
    assert replies == [alone] * 4


@pytest.mark.parametrize("slots", [2])
def test_more_sequences_than_slots_wait_their_turn(onnx_model, slots):
    arena = onnx_model.backend.scheduler.arena
    kept = arena.max_slots
    arena.max_slots = slots
    try:
        solo = [onnx_model.generate([{"role": "user", "content": q}], max_tokens=10).text() for q in QUESTIONS[:5]]
        with ThreadPoolExecutor(5) as pool:
            together = list(pool.map(
                lambda q: onnx_model.generate([{"role": "user", "content": q}], max_tokens=10).text(), QUESTIONS[:5]))
    finally:
        arena.max_slots = kept
    assert together == solo
