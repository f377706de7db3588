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
    "What is the capital of Italy?",
    "Write two lines about the sea.",
    "Name three fruits.",
    "Why do cats purr?",
    "Give me a tip for sleeping well.",
    "What do cows eat?",
    "Name a famous composer.",
    "How many wheels does a bicycle have?",
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
    held = list(onnx_model.backend.scheduler.arena.slots)  # an earlier test's abandoned stream may hold one
    solo = [job() for job in jobs]
    passes, rows = _passes(onnx_model)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda job: job(), jobs))
    new_passes, new_rows = _passes(onnx_model)
    assert together == solo
    assert (new_rows - rows) / (new_passes - passes) > 2, "passes were not shared"
    assert all(any(s is h for h in held) for s in onnx_model.backend.scheduler.arena.slots), \
        "every sequence gives its slot back"


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
    """Four branches sent at once with one long system prompt and a cold cache: the first prefills
    the shared prefix, the others wait for it and fork its KV; replies equal their solo runs."""
    shared = "You answer in one short sentence. " * 12
    prompts = [[{"role": "system", "content": shared}, {"role": "user", "content": q}] for q in QUESTIONS[:4]]
    solo = [onnx_model.generate(p, max_tokens=16).text() for p in prompts]
    onnx_model.cache.clear()
    before = onnx_model.cache.stats.model_copy()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: onnx_model.generate(p, max_tokens=16).text(), prompts))
    stats = onnx_model.cache.stats
    assert together == solo
    lengths = [len(onnx_model.prompt_ids(p)) for p in prompts]
    prefix = min(len(onnx_model.prompt_ids(p)) for p in prompts) - 16  # the user turns differ in their last tokens
    prefilled = stats.tokens_prefilled - before.tokens_prefilled
    assert prefilled < sum(lengths) - 2 * prefix, f"{prefilled} of {sum(lengths)} prompt tokens were prefilled"
    assert stats.tokens_reused - before.tokens_reused >= 3 * prefix


def test_a_cancelled_stream_leaves_without_disturbing_the_rest(onnx_model):
    other = [{"role": "user", "content": "Write a short poem about autumn leaves."}]
    other_solo = onnx_model.generate(other, max_tokens=60).text()
    scheduler = onnx_model.backend.scheduler
    held = list(scheduler.arena.slots)
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
    assert all(any(s is h for h in held) for s in scheduler.arena.slots)


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


def test_abandoned_streams_never_hold_the_slots_others_need(onnx_model):
    """Generators dropped half-read (kept referenced, so never closed) hold slots; a new sequence
    that finds every slot taken gets one of theirs, and they still finish right when resumed."""
    arena = onnx_model.backend.scheduler.arena
    kept = arena.max_slots
    prompt = [{"role": "user", "content": "What do bees make?"}]
    solo = onnx_model.generate(prompt, max_tokens=20).text()
    arena.max_slots = max(len(arena.slots), 0) + 2
    try:
        stalled = [iter(onnx_model.generate(prompt, max_tokens=20)) for _ in range(2)]
        firsts = [next(s) for s in stalled]  # both hold a slot now, and nobody reads on
        done = onnx_model.generate(prompt, max_tokens=20).text()  # needs a slot: one is parked for it
        rests = ["".join(s) for s in stalled]
    finally:
        arena.max_slots = kept
    assert done == solo
    assert [f + r for f, r in zip(firsts, rests)] == [solo, solo]


def test_transformers_fp32_batches_and_every_greedy_reply_is_its_solo_one(hf_model):
    """fp32 CPU rows in a batch differ from solo rows only by rounding (measured max |Δlogit| about
    6e-5 on the embedded model); greedy replies must not change."""
    scheduler = hf_model.backend.scheduler
    assert scheduler is not None
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    solo = [hf_model.generate(p, max_tokens=16).text() for p in prompts]
    passes, rows = _passes(hf_model)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: hf_model.generate(p, max_tokens=16).text(), prompts))
    new_passes, new_rows = _passes(hf_model)
    assert together == solo
    assert (new_rows - rows) / (new_passes - passes) > 2, "passes were not shared"


def test_a_row_in_a_batch_matches_its_solo_logits(hf_model, onnx_model):
    """The largest logit difference between a batched row and the same row alone: exactly zero on
    onnxruntime (per-row kernels), rounding only on fp32 transformers."""
    from slmflow.runtime.backends.slots import SlotState

    for model, bound in ((onnx_model, 0.0), (hf_model, 1e-3)):
        arena = model.backend.scheduler.arena
        prompts = [model.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
        with arena.lock:
            alone = []
            for ids in prompts:
                state = SlotState()
                first = arena.prefill(state, ids, False)
                alone.append(_tensor(arena.decode([state], [int(_tensor(first).argmax())])[0]))
                arena.park(state)
            states = [SlotState() for _ in prompts]
            firsts = [_tensor(arena.prefill(s, ids, False)) for s, ids in zip(states, prompts)]
            batched = _tensor(arena.decode(states, [int(f.argmax()) for f in firsts]))
            for s in states:
                arena.park(s)
        worst = max(float((batched[i] - alone[i]).abs().max()) for i in range(len(prompts)))
        assert worst <= bound, f"{model.backend.name}: a batched row differs from its solo run by {worst}"


def _tensor(logits):
    import torch

    return logits if isinstance(logits, torch.Tensor) else torch.from_numpy(logits)


def test_a_dropped_scheduler_ends_its_thread_and_frees_its_arena():
    """``unload`` gives memory back only if nothing keeps the model alive: the scheduler's own
    thread must not (it holds the scheduler only while it steps or waits, at most IDLE_S)."""
    import gc
    import time
    import weakref

    from slmflow.runtime import scheduler as scheduling

    class Arena:  # the scheduler touches nothing of an arena until a pass comes
        max_slots = 2

    arena = Arena()
    scheduler = scheduling.BatchScheduler(arena, "dropped")
    thread, gone = scheduler._thread, weakref.ref(arena)
    del scheduler, arena
    deadline = time.monotonic() + 3 * scheduling.IDLE_S + 2
    while thread.is_alive() and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.1)
    assert not thread.is_alive() and gone() is None


def test_speculative_drafts_of_several_sequences_share_one_packed_pass(hf_model):
    """Prompt-lookup drafts are multi-token passes; the transformers arena packs several of them
    with the decode rows into one pass. Replies stay their solo ones; drafts are still taken."""
    texts = ["the quick brown fox jumps over the lazy dog", "a bird in the hand is worth two in the bush",
             "all that glitters is not gold, and all that wander are not lost", "to be or not to be, that is it"]
    prompts = [[{"role": "user", "content": f"Repeat exactly, twice: {t}"}] for t in texts]
    solo = [hf_model.generate(p, max_tokens=40).result() for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: hf_model.generate(p, max_tokens=40).result(), prompts))
    assert [r.text for r in together] == [r.text for r in solo]
    assert sum(r.usage.speculated_tokens for r in together) > 0
