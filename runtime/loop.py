"""The generation loop: prefill, then one token at a time, for every backend.

It reads like gpt-fast's ``generate.py``: ``prefill`` runs the prompt, ``decode_tokens`` samples and
feeds one token at a time, and ``run_generation`` adds what users see (stop strings, streaming text,
usage). Nothing here knows which backend produced the logits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel
from slmflow.runtime.backends.base import Logits, Sequence
from slmflow.runtime.constraints import ConstraintMatcher
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.prefix_cache import CacheStats
from slmflow.runtime.sampling import Sampler
from slmflow.runtime.speculation import PromptLookup
from slmflow.runtime.stopping import LoopDetector, StopStringMatcher
from slmflow.runtime.tokenizer import ChatTokenizer, IncrementalDetokenizer

log = logging.getLogger("slmflow")
T = TypeVar("T")
R = TypeVar("R")

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    """What one generation cost. ``forced_tokens`` were appended by jump-forward decoding, without
    a forward pass of their own."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    forced_tokens: int = 0
    #: Tokens guessed by prompt lookup and taken without a forward pass of their own.
    speculated_tokens: int = 0
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float

    @classmethod
    def timed(cls, prompt_tokens: int, completion_tokens: int, start: float, first: float | None,
              end: float, **counts: int) -> Usage:
        """The usage of one generation from its clock readings (``first``: when the first token
        came, None if none did), the decode rate over the tokens after the first; every kind of
        model reports it this way, local or behind an endpoint."""
        first = first or end
        decode = end - first
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   time_to_first_token_s=first - start, total_s=end - start,
                   decode_tokens_per_s=(completion_tokens - 1) / decode
                   if completion_tokens > 1 and decode > 0 else 0.0, **counts)

    @property
    def sampled_tokens_per_s(self) -> float:
        """The decode rate over the tokens the model chose, forced ones (jump-forward: appended
        by the constraint, many per pass) left out: a reply the constraint mostly copies shows
        its model's speed here, not the thousands of tokens a second ``decode_tokens_per_s``
        counts for it. 0.0 when fewer than two tokens were chosen."""
        chosen = self.completion_tokens - self.forced_tokens - 1
        decode = self.total_s - self.time_to_first_token_s
        return chosen / decode if chosen > 0 and decode > 0 else 0.0

    @classmethod
    def combined(cls, usages: Seq[Usage]) -> Usage:
        """The usage of several generations taken as one (an agent's steps): counts and times add
        up, and the decode rate is all decoded tokens over all decoding time."""
        decoded = sum(max(u.completion_tokens - 1, 0) for u in usages)
        decode_s = sum(u.total_s - u.time_to_first_token_s for u in usages)
        return cls(prompt_tokens=sum(u.prompt_tokens for u in usages),
                   completion_tokens=sum(u.completion_tokens for u in usages),
                   cached_tokens=sum(u.cached_tokens for u in usages),
                   forced_tokens=sum(u.forced_tokens for u in usages),
                   speculated_tokens=sum(u.speculated_tokens for u in usages),
                   time_to_first_token_s=usages[0].time_to_first_token_s if usages else 0.0,
                   decode_tokens_per_s=decoded / decode_s if decoded and decode_s > 0 else 0.0,
                   total_s=sum(u.total_s for u in usages))


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    model: str
    cache: CacheStats | None = None


def prefill(seq: Sequence, token_ids: Seq[int]) -> Logits:
    """Feed the prompt's uncached suffix in one forward pass; return next-token logits."""
    return seq.extend(token_ids)


def decode_tokens(
    seq: Sequence,
    logits: Logits,
    sampler: Sampler,
    max_tokens: int,
    eos: frozenset[int],
    matcher: ConstraintMatcher | None = None,
    jump_forward: bool = True,
    drafter: PromptLookup | None = None,
) -> Iterator[tuple[int, bool]]:
    """Yield ``(token, forced)`` pairs, feeding tokens back, until EOS, ``max_tokens`` or the end of
    the constraint.

    On most backends a token is yielded before it is fed, so a consumer that stops early (a stop
    string) costs no wasted forward pass; the last yielded token is then not in the cache. A
    sequence that takes a token still on the device (``extend_on_device``: the CUDA-graph fast
    path) is fed before the host has even read the token, so detokenizing, stop checks and the
    constraint's next mask run while the GPU computes the next step; there the last token is in the
    cache (``seq.length`` says so). Under a constraint, the mask is applied before sampling, and
    tokens the grammar forces are appended in one forward pass (jump-forward).

    With a ``drafter`` (greedy sampling without penalties only; see runtime/speculation.py), the
    token just chosen is fed together with a guess of the tokens after it, and every guessed token
    that is the greedy choice at its position is taken without a pass of its own; the first one
    that is not is replaced by the model's choice there. The output is the one greedy decoding
    gives, on backends whose wide and one-token passes agree (``batch_invariant``).
    """
    feed_on_device = seq.extend_on_device if seq.feeds_on_device else None
    produced = 0
    while True:
        if matcher is not None:
            logits = matcher.mask(logits)
        pending = sampler.pick(logits)
        produced += 1
        ahead = None
        if feed_on_device is not None and produced < max_tokens:
            ahead = feed_on_device(pending.on_device)
        token = pending.wait()
        if matcher is not None:
            matcher.advance(token)
        yield token, False
        if token in eos or produced == max_tokens or (matcher is not None and matcher.finished):
            return
        new = [] if ahead is not None else [token]
        if matcher is not None and jump_forward:
            for forced in matcher.forced_tokens()[: max_tokens - produced]:
                matcher.advance(forced)
                produced += 1
                new.append(forced)
                yield forced, True
            if produced == max_tokens or matcher.finished:
                return
        if ahead is not None:
            logits = ahead
            continue
        draft = []
        if drafter is not None:
            drafter.append(new)
            draft = drafter.propose()[: max_tokens - produced - 1]
        if not draft:
            logits = seq.extend(new)
            continue
        rows = seq.extend_all(new + draft)
        kept, logits, done = _accept_draft(rows[len(new) - 1:], draft, matcher, eos)
        seq.rewind(seq.length - (len(draft) - kept))
        drafter.record(len(draft), kept)
        drafter.append(draft[:kept])
        produced += kept
        for token in draft[:kept]:
            yield token, False
        if done:
            return


def _accept_draft(rows: Logits, draft: list[int], matcher: ConstraintMatcher | None,
                  eos: frozenset[int]) -> tuple[int, Logits, bool]:
    """How many drafted tokens greedy decoding would have chosen itself; ``rows[i]`` are the logits
    for the position of ``draft[i]``. Returns that count, the logits for the position after the
    last kept token (masked already if a draft token was rejected there), and whether the kept
    tokens ended the generation (EOS, or the constraint's end)."""
    for i, token in enumerate(draft):
        row = matcher.mask(rows[i]) if matcher is not None else rows[i]
        if int(row.argmax()) != token:
            return i, row, False
        if matcher is not None:
            matcher.advance(token)
        if token in eos or (matcher is not None and matcher.finished):
            return i + 1, rows[i + 1], True
    return len(draft), rows[len(draft)], False


@dataclass(frozen=True)
class Decoding:
    """How one generation decodes, checked and ready: what the loop needs beyond the sequence,
    the prompt and the sampler. Models build it from the caller's
    :class:`~slmflow.runtime.protocol.GenerateOptions`."""

    max_tokens: int
    model_name: str
    stop: Seq[str] = ()
    matcher: ConstraintMatcher | None = None
    jump_forward: bool = True
    loops: LoopDetector | None = None
    drafter: PromptLookup | None = None

    @classmethod
    def local(cls, options: GenerateOptions, max_tokens: int, model_name: str, matcher: ConstraintMatcher | None,
              prompt_ids: Seq[int], batch_invariant: bool) -> Decoding:
        """How a local model decodes ``options``: loop detection when asked, and prompt-lookup
        speculation for greedy decoding without penalties only where a wide pass computes what
        one-token passes would (``Backend.batch_invariant``); elsewhere (int4 onnxruntime-genai) a
        verified guess can flip a near-tie and change the output."""
        sampling = options.sampler_params
        exact = sampling.greedy and not sampling.penalised and batch_invariant
        return cls(max_tokens=max_tokens, model_name=model_name, stop=tuple(options.stop), matcher=matcher,
                   jump_forward=options.jump_forward, loops=LoopDetector() if options.stop_on_loops else None,
                   drafter=PromptLookup(prompt_ids) if options.speculate and exact else None)


def run_generation(seq: Sequence, prompt_ids: list[int], cached: int, tokenizer: ChatTokenizer, sampler: Sampler,
                   decoding: Decoding, path: list[int], on_prefilled: Callable[[], None] | None = None
                   ) -> Iterator[str]:
    """Stream text deltas; the generator's return value is the :class:`GenerationResult`.

    ``seq`` already holds ``prompt_ids[:cached]``; only the rest is prefilled. Every sampled token
    is appended to ``path`` as it is chosen, so a caller that keeps ``seq`` knows which tokens its
    KV holds even when the consumer abandons the stream midway. With ``decoding.loops``,
    generation stops (finish "stop", one log line) once the output repeats itself (see
    :class:`LoopDetector`) and, under a constraint, is complete. ``on_prefilled`` is called once the
    prompt is in the KV (the prefix cache lets prompts sharing it fork it from then on).
    """
    start = time.perf_counter()
    matcher, loops, drafter = decoding.matcher, decoding.loops, decoding.drafter
    logits = prefill(seq, prompt_ids[cached:])
    if on_prefilled is not None:
        on_prefilled()
    detok = IncrementalDetokenizer(tokenizer)
    stopper = StopStringMatcher(decoding.stop)
    pieces: list[str] = []
    first_token_at = None
    finish: FinishReason = "length"
    n_forced = 0
    steps = decode_tokens(seq, logits, sampler, decoding.max_tokens, tokenizer.eos_token_ids, matcher,
                          decoding.jump_forward, drafter)
    for token, forced in steps:
        if first_token_at is None:
            first_token_at = time.perf_counter()
        n_forced += forced
        path.append(token)
        if token in tokenizer.eos_token_ids:
            detok.ids.append(token)
            finish = "stop"
            break
        delta = stopper.feed(detok.push(token))
        if delta:
            pieces.append(delta)
            yield delta
        if stopper.stopped:
            finish = "stop"
            break
        if loops is not None and loops.feed(token) and (matcher is None or matcher.accepting):
            log.info("%s: stopped a loop (a %d-token block repeating) after %d tokens", decoding.model_name,
                     loops.period, len(detok.ids))
            finish = "stop"
            break
    else:
        if matcher is not None and matcher.finished:
            finish = "stop"
    tail = stopper.flush()
    if tail:
        pieces.append(tail)
        yield tail
    usage = Usage.timed(len(prompt_ids), len(detok.ids), start, first_token_at, time.perf_counter(),
                        cached_tokens=cached, forced_tokens=n_forced,
                        speculated_tokens=drafter.accepted if drafter is not None else 0)
    return GenerationResult(text="".join(pieces), token_ids=list(detok.ids), finish_reason=finish, usage=usage,
                            model=decoding.model_name)


class Stream(Generic[T, R]):
    """A lazy generator of items with a return value: iterate it for the items, ``value()`` for
    what the generator returned. Nothing runs until the first iteration; iterating twice replays
    the items. The one place a generator's return value is read (``StopIteration.value``)."""

    def __init__(self, stream: Iterator[T]) -> None:
        self._stream = stream
        self._items: list[T] = []
        self._done = False
        self._value: R | None = None

    def __iter__(self) -> Iterator[T]:
        if self._done:
            yield from self._items
            return
        while True:
            try:
                item = next(self._stream)
            except StopIteration as done:
                self._value, self._done = done.value, True
                return
            self._items.append(item)
            yield item

    def value(self) -> R:
        """The generator's return value, running it to the end first."""
        for _ in self:
            pass
        return self._value  # type: ignore[return-value]

    @property
    def items(self) -> list[T]:
        """What was yielded so far (all of it after ``value()``)."""
        return self._items


def drain(stream: Iterator[T]) -> tuple[list[T], R]:
    """Run ``stream`` to its end: what it yielded, and what it returned."""
    whole: Stream[T, R] = Stream(stream)
    value = whole.value()
    return whole.items, value


class Response(Stream[str, GenerationResult]):
    """A lazy, iterable generation: iterate for text deltas, or ask for the whole result.

    Nothing runs until the first iteration or ``result()``; iterating twice replays the text.
    """

    def result(self) -> GenerationResult:
        return self.value()

    def text(self) -> str:
        return self.result().text
